// Package nodeapi is the contract of ztunnel's node API: the unix-socket HTTP API through
// which the local lab, or a Kubernetes CNI plugin, hands a pod (its UID and network
// namespace) to the ztunnel on its node, takes it back, and lists what ztunnel holds.
//
//	POST   /v1/pods        Registration  → 204
//	DELETE /v1/pods/{uid}                → 204
//	GET    /v1/pods                      → []PodStatus
//	GET    /v1/peer?src=ip:port&dst=ip:port → Peer, or 404 when no live connection matches
//	POST   /v1/handover                  → []Registration
//
// The peer lookup answers an application inside an enrolled pod that wants to know who is
// calling: src and dst are the remote and local addresses of a connection as the application
// sees them (its accepted socket's RemoteAddr and LocalAddr). ztunnel keeps a record for
// every inbound connection it has open to an application, from before the application can
// accept it until it closes.
package nodeapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
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

	// What a CNI plugin knows of the pod before the controller does (a pod has no IP in the
	// API until its sandbox is up, which is after the CNI ADD): its ServiceAccount and the
	// addresses the cluster's network plugin gave it. With Ambient set (the caller checked
	// the pod's and its namespace's labels), ztunnel captures the pod from these at once and
	// answers Add only once the pod is captured, so that its containers never start outside
	// the mesh; the controller's Workload takes their place when it comes.
	ServiceAccount string   `json:"serviceAccount,omitempty"`
	IPs            []string `json:"ips,omitempty"`
	Ambient        bool     `json:"ambient,omitempty"`
}

// PodStatus is one pod as ztunnel sees it.
type PodStatus struct {
	Registration
	Captured bool   `json:"captured"`
	Reason   string `json:"reason,omitempty"`
}

// Peer is who is behind one inbound connection, as ztunnel verified it.
type Peer struct {
	// Identity is the SPIFFE ID of the HBONE peer's certificate: the calling workload, or the
	// waypoint for a workload bound to one. Empty for plaintext.
	Identity string `json:"identity,omitempty"`
	// MTLS is true when the connection arrived over HBONE (mutual TLS).
	MTLS bool `json:"mtls"`
}

// ErrUnknownPeer is returned by Client.Peer when ztunnel has no live inbound connection with
// that address pair: the connection did not come through ztunnel, or it has closed.
var ErrUnknownPeer = errors.New("ztunnel node api: no such inbound connection")

// The hand-over: a new ztunnel on the node opens its listeners in every pod beside the old
// one's (SO_REUSEPORT; new connections go to the newest socket), then calls POST
// /v1/handover on the old one. The old ztunnel stops changing pods (Add and Remove answer 503
// from then on), accepts what its listeners still have queued, closes them, and answers with
// the pods it holds; it then drains its connections and exits. The new one reconciles its
// pods with that list and takes over the node API's socket path.

// Client calls a ztunnel's node API over its unix socket.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the socket at path. Every call dials the path afresh: a
// kept-alive connection would stay with a ztunnel that has handed the path over to its
// successor, and ask it about connections it no longer carries.
func NewClient(path string) *Client {
	return &Client{http: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
		},
	}}
}

// NewConnClient returns a client that sends every request, one at a time, over the single
// connection conn, already open to a ztunnel's node API. A successor uses it to keep asking
// its predecessor about the connections that one is draining after the socket's path has
// been taken over. Once conn fails, every call fails.
func NewConnClient(conn net.Conn) *Client {
	var once sync.Once
	return &Client{http: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxConnsPerHost: 1,
			DialContext: func(context.Context, string, string) (net.Conn, error) {
				var c net.Conn
				once.Do(func() { c = conn })
				if c == nil {
					return nil, errors.New("ztunnel node api: connection closed")
				}
				return c, nil
			},
		},
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
	if resp.StatusCode == http.StatusNotFound && method == http.MethodGet && strings.HasPrefix(path, "/v1/peer?") {
		return ErrUnknownPeer
	}
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
	// Workload UIDs hold slashes ("Kubernetes//Pod/ns/name"): one escaped path segment.
	return c.do(ctx, http.MethodDelete, "/v1/pods/"+url.PathEscape(uid), nil, nil)
}

// Pods lists the pods ztunnel holds.
func (c *Client) Pods(ctx context.Context) ([]PodStatus, error) {
	var out []PodStatus
	err := c.do(ctx, http.MethodGet, "/v1/pods", nil, &out)
	return out, err
}

// Peer returns who is behind the inbound connection that an application in a pod sees from
// src (its remote address) to dst (its local address); ErrUnknownPeer when ztunnel has no
// such connection.
func (c *Client) Peer(ctx context.Context, src, dst netip.AddrPort) (Peer, error) {
	var p Peer
	q := url.Values{"src": {src.String()}, "dst": {dst.String()}}
	err := c.do(ctx, http.MethodGet, "/v1/peer?"+q.Encode(), nil, &p)
	return p, err
}

// Handover asks the ztunnel behind the socket to hand its pods over to the caller: see the
// package documentation. It returns once the old ztunnel's pod listeners are closed, with
// the pods it held.
func (c *Client) Handover(ctx context.Context) ([]Registration, error) {
	var out []Registration
	err := c.do(ctx, http.MethodPost, "/v1/handover", nil, &out)
	return out, err
}
