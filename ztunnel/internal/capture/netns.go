package capture

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mark is the socket mark on every socket ztunnel opens in a pod: the capture rules let
// marked packets through, so ztunnel's own traffic is not redirected back to itself.
const Mark = 0x539

// InNetns runs fn on an OS thread switched into the network namespace at path. Sockets
// created by fn belong to that namespace for their whole life, wherever they are used
// afterwards. If the thread cannot be switched back, it is discarded rather than reused.
func InNetns(path string, fn func() error) error {
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer unix.Close(target)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime ends it with this goroutine.
			errc <- fmt.Errorf("leave netns %s: %w", path, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// markControl sets the capture mark on a socket before it binds or connects.
func markControl(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, Mark)
	}); err != nil {
		return err
	}
	return serr
}

// Listen opens a marked TCP listener inside the namespace at path.
func Listen(path, addr string) (net.Listener, error) {
	var ln net.Listener
	err := InNetns(path, func() error {
		lc := net.ListenConfig{Control: markControl}
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s in %s: %w", addr, path, err)
	}
	return ln, nil
}

// Dial connects from inside the namespace at path with a marked socket, so the
// connection leaves with the pod's address and is not captured again.
func Dial(ctx context.Context, path, addr string) (*net.TCPConn, error) {
	var c net.Conn
	err := InNetns(path, func() error {
		d := net.Dialer{Control: markControl}
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", addr, path, err)
	}
	return c.(*net.TCPConn), nil
}
