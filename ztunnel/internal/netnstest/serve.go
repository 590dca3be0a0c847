package netnstest

import (
	"io"
	"net"
)

// Serve accepts on ln until it is closed and handles each connection on a goroutine of its
// own, closing it when handle returns.
func Serve(ln net.Listener, handle func(c net.Conn)) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// Echo reads c to its end and answers "echo: " and what it read: the test servers' reply.
func Echo(c net.Conn) {
	b, _ := io.ReadAll(c)
	_, _ = c.Write(append([]byte("echo: "), b...))
}
