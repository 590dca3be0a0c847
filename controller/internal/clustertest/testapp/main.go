// Command testapp is the application of the test cluster's pods (image ambit.dev/testapp): the
// local lab's sample applications (controller/lab.ServeApp) in a binary of their own, so that
// a pod on a real kubelet answers exactly as a lab pod does. The HTTP echo reports the caller's
// address, and its mesh identity when --node-api names the node's ztunnel socket.
//
//	testapp [--kind http-echo|tcp-echo|grpc] [--port 8080] [--pod NS/NAME] [--node-api PATH]
//	testapp --get URL     one GET from inside the pod (kubectl exec): prints the body, fails
//	                      on a status other than 2xx
//	testapp --get URL --count N [--every 50ms]
//	                      N GETs, each on a new connection, one every --every: prints a JSON
//	                      summary (calls, failed, the first errors, answers per echoing pod)
//
// --pod defaults to $POD_NAMESPACE/$POD_NAME (the downward API).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"ambit.dev/controller/lab"
)

func main() {
	kind := flag.String("kind", "http-echo", "application: "+strings.Join(lab.AppKinds, ", "))
	port := flag.Int("port", 8080, "TCP port to listen on")
	pod := flag.String("pod", "", "namespace/name reported by the HTTP echo (default $POD_NAMESPACE/$POD_NAME)")
	nodeAPI := flag.String("node-api", "", "node API socket of the node's ztunnel, asked for each caller's identity")
	get := flag.String("get", "", "make one GET request to this URL, print the body and exit")
	count := flag.Int("count", 0, "with --get: make this many requests, each on a new connection, and print a JSON summary")
	every := flag.Duration("every", 0, "with --count: the interval between the starts of two requests (0: back to back)")
	flag.Parse()
	if *get != "" && *count > 0 {
		if err := json.NewEncoder(os.Stdout).Encode(fetchMany(*get, *count, *every)); err != nil {
			fmt.Fprintln(os.Stderr, "testapp:", err)
			os.Exit(1)
		}
		return
	}
	if *get != "" {
		if err := fetch(*get); err != nil {
			fmt.Fprintln(os.Stderr, "testapp:", err)
			os.Exit(1)
		}
		return
	}
	if *pod == "" && os.Getenv("POD_NAME") != "" {
		*pod = os.Getenv("POD_NAMESPACE") + "/" + os.Getenv("POD_NAME")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := lab.ServeApp(ctx, *kind, *port, *pod, *nodeAPI, log); err != nil {
		fmt.Fprintln(os.Stderr, "testapp:", err)
		os.Exit(1)
	}
}

func fetch(url string) error {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// summary is what --count prints.
type summary struct {
	Calls  int            `json:"calls"`
	Failed int            `json:"failed"`
	Errors []string       `json:"errors,omitempty"` // the first ten, with the time each failed
	Pods   map[string]int `json:"pods"`             // answers per echoing pod (the body's "pod")
}

// fetchMany makes n GETs of url, each on a new TCP connection (so each is a new tunnel flow
// through ztunnel), starting one every interval; a non-2xx answer or an error counts as failed.
func fetchMany(url string, n int, every time.Duration) summary {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	s := summary{Pods: map[string]int{}}
	next := time.Now()
	for range n {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		next = next.Add(every)
		s.Calls++
		pod, err := fetchPod(c, url)
		if err != nil {
			s.Failed++
			if len(s.Errors) < 10 {
				s.Errors = append(s.Errors, time.Now().UTC().Format("15:04:05.000")+" "+err.Error())
			}
			continue
		}
		s.Pods[pod]++
	}
	return s
}

func fetchPod(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		Pod string `json:"pod"`
	}
	if resp.StatusCode/100 != 2 {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	return body.Pod, nil
}
