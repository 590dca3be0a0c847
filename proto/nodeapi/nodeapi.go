// Package nodeapi is the contract of ztunnel's node API: the unix-socket HTTP API through
// which the local lab, or a Kubernetes CNI plugin, hands a pod (its UID and network
// namespace) to the ztunnel on its node, takes it back, and lists what ztunnel holds.
//
//	POST   /v1/pods        Registration  → 204
//	DELETE /v1/pods/{uid}                → 204
//	GET    /v1/pods                      → []PodStatus
package nodeapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Registration is what the node API receives for one pod.
type Registration struct {
	UID       string `json:"uid"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// NetNS is the path of the pod's network namespace, e.g. /var/run/netns/x or
	// /proc/<pid>/ns/net.
	NetNS string `json:"netns"`
}

// PodStatus is one pod as ztunnel sees it.
type PodStatus struct {
	Registration
	Captured bool   `json:"captured"`
	Reason   string `json:"reason,omitempty"`
}

// Client calls a ztunnel's node API over its unix socket.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{http: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

func (c *Client) do(ctx context.Context, method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://ztunnel"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("ztunnel node api: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("ztunnel node api %s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(msg)))
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// Add hands a pod to ztunnel.
func (c *Client) Add(ctx context.Context, r Registration) error {
	return c.do(ctx, http.MethodPost, "/v1/pods", r, nil)
}

// Remove takes a pod back.
func (c *Client) Remove(ctx context.Context, uid string) error {
	return c.do(ctx, http.MethodDelete, "/v1/pods/"+uid, nil, nil)
}

// Pods lists the pods ztunnel holds.
func (c *Client) Pods(ctx context.Context) ([]PodStatus, error) {
	var out []PodStatus
	err := c.do(ctx, http.MethodGet, "/v1/pods", nil, &out)
	return out, err
}
