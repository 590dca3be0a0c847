package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// clientHello returns the first bytes a TLS client sends for server name sni.
func clientHello(t testing.TB, sni string) []byte {
	a, b := net.Pipe()
	go func() {
		c := tls.Client(a, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		_ = c.Handshake()
		a.Close()
	}()
	_ = b.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64<<10)
	n, _ := b.Read(buf)
	b.Close()
	if n == 0 {
		t.Fatal("no client hello")
	}
	return buf[:n]
}

func TestPeekSNI(t *testing.T) {
	hello := clientHello(t, "db.example.com")
	br := bufio.NewReaderSize(bytes.NewReader(hello), 64<<10)
	got, br2 := peekSNI(br)
	if got != "db.example.com" {
		t.Fatalf("server name %q", got)
	}
	if br2 != br || br.Buffered() != len(hello) {
		t.Fatal("peekSNI consumed bytes or replaced a reader that held the hello")
	}
	for _, in := range [][]byte{nil, []byte("GET / HTTP/1.1\r\n"), {0x16, 3, 1, 0xff, 0xff}, hello[:10]} {
		if got, _ := peekSNI(bufio.NewReaderSize(bytes.NewReader(in), 64<<10)); got != "" {
			t.Fatalf("%q: server name %q", in, got)
		}
	}
	// A hello longer than the reader's buffer is read through a larger reader stacked on
	// it, and the stream read from that one loses nothing.
	small := bufio.NewReaderSize(bytes.NewReader(hello), 16)
	got, grown := peekSNI(small)
	if got != "db.example.com" || grown == small {
		t.Fatalf("server name %q through a %d-byte reader (grown: %v)", got, small.Size(), grown != small)
	}
	if all, err := io.ReadAll(grown); err != nil || !bytes.Equal(all, hello) {
		t.Fatalf("read %d of %d bytes after the peek (%v)", len(all), len(hello), err)
	}
}

func FuzzPeekSNI(f *testing.F) {
	f.Add(clientHello(f, "db.example.com"))
	f.Add([]byte{0x16, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = peekSNI(bufio.NewReaderSize(bytes.NewReader(b), 64<<10))
	})
}
