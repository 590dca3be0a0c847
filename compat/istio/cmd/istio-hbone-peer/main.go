// Command istio-hbone-peer runs Istio's own Go HBONE (istio.io/istio/pkg/hbone: its dialer and
// its server, the implementation Istio's Go ztunnel used before Istio moved to Rust) as one side
// of a benchmark peer pair for `make bench` (scenario istio-go-hbone, bench/internal/peer):
//
//   - the client side listens on plain TCP addresses and carries each accepted connection as
//     an HTTP/2 CONNECT to the server side over mutual TLS 1.3, its connections pooled by
//     golang.org/x/net/http2's transport, as a ztunnel pools its tunnels;
//   - the server side terminates TLS and answers each CONNECT by dialling its authority.
//
// Both present a SPIFFE SVID of the lab's CA and verify the peer's chain to the lab's root with
// ambit's SPIFFE check (mesh/identity.VerifyPeer: Istio's dialer only knows DNS names); the
// client also checks the server's SPIFFE ID. Istio's hbone log scope is set to warnings, so
// that it does not log two lines per connection.
//
// The configuration file (-config), written by bench/internal/peer, has one directive a line:
//
//	role client|server
//	cert FILE                       the side's certificate chain and key, PEM
//	ca FILE                         the root it trusts, PEM
//	server-id spiffe://…            client: the server side's SPIFFE ID
//	tunnel LISTEN PROXY AUTHORITY   client: accept on LISTEN, CONNECT to AUTHORITY via PROXY
//	listen ADDR                     server: an HBONE listener
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"ambit.dev/mesh/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	ihbone "istio.io/istio/pkg/hbone"
	istiolog "istio.io/istio/pkg/log"
)

type tunnel struct{ listen, proxy, authority string }

type config struct {
	role, cert, ca, serverID string
	tunnels                  []tunnel
	listens                  []string
}

func main() {
	file := flag.String("config", "", "the configuration file (see the package documentation)")
	flag.Parse()
	if err := run(*file); err != nil {
		fmt.Fprintln(os.Stderr, "istio-hbone-peer:", err)
		os.Exit(1)
	}
}

func run(file string) error {
	cfg, err := load(file)
	if err != nil {
		return err
	}
	if s := istiolog.FindScope("hbone"); s != nil {
		s.SetOutputLevel(istiolog.WarnLevel)
	}
	cert, bundle, err := credentials(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if cfg.role == "client" {
		return runClient(ctx, cfg, cert, bundle)
	}
	return runServer(ctx, cfg, cert, bundle)
}

func load(file string) (config, error) {
	var cfg config
	b, err := os.ReadFile(file)
	if err != nil {
		return cfg, err
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch {
		case f[0] == "role" && len(f) == 2 && (f[1] == "client" || f[1] == "server"):
			cfg.role = f[1]
		case f[0] == "cert" && len(f) == 2:
			cfg.cert = f[1]
		case f[0] == "ca" && len(f) == 2:
			cfg.ca = f[1]
		case f[0] == "server-id" && len(f) == 2:
			cfg.serverID = f[1]
		case f[0] == "tunnel" && len(f) == 4:
			cfg.tunnels = append(cfg.tunnels, tunnel{f[1], f[2], f[3]})
		case f[0] == "listen" && len(f) == 2:
			cfg.listens = append(cfg.listens, f[1])
		default:
			return cfg, fmt.Errorf("%s:%d: unknown or malformed directive %q", file, n, sc.Text())
		}
	}
	switch {
	case cfg.role == "" || cfg.cert == "" || cfg.ca == "":
		return cfg, fmt.Errorf("%s: role, cert and ca are required", file)
	case cfg.role == "client" && (cfg.serverID == "" || len(cfg.tunnels) == 0 || len(cfg.listens) > 0):
		return cfg, fmt.Errorf("%s: a client needs server-id and tunnels, and no listen", file)
	case cfg.role == "server" && (len(cfg.listens) == 0 || len(cfg.tunnels) > 0):
		return cfg, fmt.Errorf("%s: a server needs listen, and no tunnel", file)
	}
	return cfg, nil
}

func credentials(cfg config) (tls.Certificate, *x509bundle.Bundle, error) {
	b, err := os.ReadFile(cfg.cert)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	cert, err := tls.X509KeyPair(b, b)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("%s: %w", cfg.cert, err)
	}
	rootPEM, err := os.ReadFile(cfg.ca)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	blk, _ := pem.Decode(rootPEM)
	if blk == nil {
		return tls.Certificate{}, nil, fmt.Errorf("%s: no PEM certificate", cfg.ca)
	}
	root, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("%s: %w", cfg.ca, err)
	}
	if len(root.URIs) != 1 {
		return tls.Certificate{}, nil, fmt.Errorf("%s: the root names no trust domain", cfg.ca)
	}
	td, err := spiffeid.TrustDomainFromURI(root.URIs[0])
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("%s: %w", cfg.ca, err)
	}
	bundle, err := identity.LoadBundle(td, cfg.ca)
	return cert, bundle, err
}

func runClient(ctx context.Context, cfg config, cert tls.Certificate, bundle *x509bundle.Bundle) error {
	want, err := spiffeid.FromString(cfg.serverID)
	if err != nil {
		return fmt.Errorf("server-id: %w", err)
	}
	errc := make(chan error, len(cfg.tunnels))
	for _, t := range cfg.tunnels {
		d := ihbone.NewDialer(ihbone.Config{ProxyAddress: t.proxy, TLS: &tls.Config{
			MinVersion:         tls.VersionTLS13,
			Certificates:       []tls.Certificate{cert},
			InsecureSkipVerify: true, // replaced by the SPIFFE check below
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				id, err := identity.VerifyPeer(raw, bundle)
				if err == nil && id != want {
					err = fmt.Errorf("server is %s, want %s", id, want)
				}
				return err
			},
		}})
		ln, err := net.Listen("tcp", t.listen)
		if err != nil {
			return err
		}
		defer ln.Close()
		go func() {
			errc <- serve(ln, func(c net.Conn) {
				up, err := d.DialContext(ctx, "tcp", t.authority)
				if err != nil {
					c.Close()
					return
				}
				pipe(c, up)
			})
		}()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

func runServer(ctx context.Context, cfg config, cert tls.Certificate, bundle *x509bundle.Bundle) error {
	errc := make(chan error, len(cfg.listens))
	for _, addr := range cfg.listens {
		s := ihbone.NewServer()
		s.Protocols.SetHTTP2(true)
		s.ErrorLog = stdlog.New(io.Discard, "", 0) // handshakes refused by the SPIFFE check
		s.TLSConfig = &tls.Config{
			MinVersion:   tls.VersionTLS13,
			NextProtos:   []string{"h2"},
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAnyClientCert,
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				_, err := identity.VerifyPeer(raw, bundle)
				return err
			},
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		defer s.Close()
		go func() { errc <- s.ServeTLS(ln, "", "") }()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

func serve(ln net.Listener, handle func(net.Conn)) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		go handle(c)
	}
}

// pipe copies both ways and closes both when both directions are done; a direction's end is
// passed on as a half-close where the connection has one.
func pipe(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = dst.Close()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
	a.Close()
	b.Close()
}
