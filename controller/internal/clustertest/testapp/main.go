// Command testapp is the application of the test cluster's pods (image ambit.dev/testapp): the
// local lab's sample applications (controller/lab.ServeApp) in a binary of their own, so that
// a pod on a real kubelet answers exactly as a lab pod does. The HTTP echo reports the caller's
// address, and its mesh identity when --node-api names the node's ztunnel socket.
//
//	testapp [--kind http-echo|tcp-echo|grpc] [--port 8080] [--pod NS/NAME] [--node-api PATH]
//	testapp --get URL     one GET from inside the pod (kubectl exec): prints the body, fails
//	                      on a status other than 2xx
//
// --pod defaults to $POD_NAMESPACE/$POD_NAME (the downward API).
package main

import (
	"context"
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
	flag.Parse()
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
