package capture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mark is the socket mark on every socket ztunnel opens in a pod: the capture rules let
// marked packets through, so ztunnel's own traffic is not redirected back to itself.
const Mark = 0x539

// InNetns runs fn on an OS thread switched into the network namespace at path. Sockets
// created by fn belong to that namespace for their whole life, wherever they are used
// afterwards. If the thread cannot be switched back, it is discarded rather than reused.
func InNetns(path string, fn func() error) error {
	return onNetnsThread(path, func(*netnsThread) error { return fn() })
}

// hostNetns is the namespace ztunnel's threads live in, opened by the first call that
// succeeds, before any thread enters a pod's: every thread that enters one comes back here.
// A failure (out of files, say) is not kept: the next call tries again.
func hostNetns() (int, error) {
	host.mu.Lock()
	defer host.mu.Unlock()
	if host.ok {
		return host.fd, nil
	}
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open own netns: %w", err)
	}
	host.fd, host.ok = fd, true
	return fd, nil
}

var host struct {
	mu sync.Mutex
	fd int
	ok bool
}

// netnsThread is the locked OS thread of one onNetnsThread call, switched into a pod's
// namespace until leave.
type netnsThread struct {
	path string
	host int // the namespace to return to (hostNetns)
	left bool
	err  error
}

// leave switches the thread back to ztunnel's namespace and unlocks it, once; later calls
// return the first call's result. On failure the thread stays locked, and the runtime
// ends it with its goroutine.
func (t *netnsThread) leave() error {
	if t.left {
		return t.err
	}
	t.left = true
	if err := unix.Setns(t.host, unix.CLONE_NEWNET); err != nil {
		t.err = fmt.Errorf("leave netns %s: %w", t.path, err)
		return t.err
	}
	runtime.UnlockOSThread()
	return nil
}

// onNetnsThread runs fn on a new goroutine locked to an OS thread in the namespace at
// path; fn may leave it early (a dial leaves as soon as its socket exists, so that waiting
// for the connection does not hold a locked thread).
func onNetnsThread(path string, fn func(*netnsThread) error) error {
	host, err := hostNetns()
	if err != nil {
		return err
	}
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer unix.Close(target)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		t := &netnsThread{path: path, host: host}
		ferr := fn(t)
		if err := t.leave(); err != nil {
			errc <- err
			return
		}
		errc <- ferr
	}()
	return <-errc
}

// listenControl marks a listener and lets it share its port (SO_REUSEPORT): a new ztunnel
// opens its listeners beside the old one's during a hand-over.
func listenControl(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, Mark)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}
	}); err != nil {
		return err
	}
	return serr
}

// steerNewest is a classic BPF reuseport program: it picks the socket at index 1 of the
// port's reuseport group. While an old and a new ztunnel both listen, the group is [old,
// new] (sockets are appended as they join), so every new connection goes to the new one and
// the old one's accept queue stops filling. With one socket the index is out of range and
// the kernel falls back to its hash, which can only pick that socket.
var steerNewest = []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 1}}

// Listen opens a marked TCP listener inside the namespace at path, with SO_REUSEPORT and
// the steering program attached to its port's group (see steerNewest). Its connections
// get TCP keep-alive unless local says they come from the pod's own applications, where
// probes would only cross the pod's loopback and cost four system calls per accept.
func Listen(path, addr string, local bool) (net.Listener, error) {
	var ln net.Listener
	err := InNetns(path, func() error {
		lc := net.ListenConfig{Control: listenControl, KeepAlive: keepAlive(local)}
		// Go listens with multipath TCP where the kernel has it; an MPTCP socket takes no
		// reuseport program (EOPNOTSUPP), and a pod's listeners gain nothing from MPTCP.
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			return err
		}
		if err := Steer(ln.(*net.TCPListener)); err != nil {
			ln.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s in %s: %w", addr, path, err)
	}
	return ln, nil
}

// ListenPacket opens a marked UDP socket inside the namespace at path, for HBONE over
// HTTP/3: the pod's UDP 15008, or (addr with port 0) the socket of one outgoing QUIC
// connection, which then leaves from the pod's address and, marked, is never captured. A
// listening socket (a port other than 0) joins its port's reuseport group with the steering
// program, as the TCP listeners do: during a hand-over the successor's socket receives
// every datagram. Unlike TCP, where an accepted connection is a socket of its own, the
// datagrams of the QUIC connections the predecessor still serves go there too, and those
// connections break: in-flight HTTP/3 streams into a pod do not survive a hand-over (new
// ones reach the successor; docs/operations.md).
func ListenPacket(path, addr string) (*net.UDPConn, error) {
	var pc *net.UDPConn
	err := InNetns(path, func() error {
		lc := net.ListenConfig{Control: listenControl}
		c, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			return err
		}
		pc = c.(*net.UDPConn)
		if !ephemeral(addr) {
			if err := Steer(pc); err != nil {
				pc.Close()
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listen udp %s in %s: %w", addr, path, err)
	}
	return pc, nil
}

// ephemeral reports whether addr asks for a port the kernel picks ("" or port 0).
func ephemeral(addr string) bool {
	if addr == "" {
		return true
	}
	_, port, err := net.SplitHostPort(addr)
	return err != nil || port == "" || port == "0"
}

// Steer attaches the steering program to the reuseport group of ln (a *net.TCPListener or
// a *net.UDPConn), which must have been opened with SO_REUSEPORT: new connections (for UDP,
// all datagrams) go to the socket that joined the group second.
func Steer(ln syscall.Conn) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		prog := unix.SockFprog{Len: uint16(len(steerNewest)), Filter: &steerNewest[0]}
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &prog)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("attach reuseport steering program: %w", serr)
	}
	return nil
}

// DialOptions shape a dial from inside a pod; the zero value is a plain marked dial.
type DialOptions struct {
	// Source, when valid, asks for a transparent connection: from Source's address (a
	// foreign one, the original client's) with IP_TRANSPARENT, and from a port other than
	// Source's, because conntrack may still hold the client's own connection under that
	// tuple. Replies reach the socket through the policy routing Install adds. When the
	// kernel refuses IP_TRANSPARENT, the connection comes from the destination's address,
	// which is the pod's own: callers see the difference in the connection's local address.
	Source netip.AddrPort
	// Bound, if not nil, is called with the local address after the socket is bound and
	// before it connects. It is called only when Source is valid.
	Bound func(local netip.AddrPort)
	// Local marks a dial to an application in the same pod: no TCP keep-alive.
	Local bool
}

// keepAlive is the keep-alive setting of a socket: Go's default (15 s), or off (-1) for
// a connection that never leaves the pod.
func keepAlive(local bool) time.Duration {
	if local {
		return -1
	}
	return 0
}

// errPortClash means the kernel gave the socket the port the dial must avoid; try again.
var errPortClash = errors.New("bound to the original source port")

// errSecondSocket means a dial asked for another socket after its thread left the pod's
// namespace; try again from inside.
var errSecondSocket = errors.New("a second socket in one dial")

// Dial connects from inside the namespace at path with a marked socket, so the
// connection leaves with the pod's address (or, transparently, o.Source's) and is not
// captured again.
func Dial(ctx context.Context, path, addr string, o DialOptions) (*net.TCPConn, error) {
	// An IP destination, so that the dialer makes one socket, on this thread (a name with
	// several addresses would be dialled from other goroutines, outside the namespace).
	dst, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: the destination must be an IP address and port: %w", addr, path, err)
	}
	var c net.Conn
	for range 4 {
		err = onNetnsThread(path, func(t *netnsThread) error {
			d := net.Dialer{Control: dialControl(t, dst, o), KeepAlive: keepAlive(o.Local)}
			// One socket per dial: a fallback (MPTCP to TCP) would open its socket after
			// the thread has left the namespace.
			d.SetMultipathTCP(false)
			var err error
			c, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		// Go's dialer opens a second socket after a connection to itself or a spurious
		// EADDRNOTAVAIL; outside the namespace it is refused, and the dial starts over.
		if !errors.Is(err, errPortClash) && !errors.Is(err, errSecondSocket) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", addr, path, err)
	}
	return c.(*net.TCPConn), nil
}

// dialControl prepares the dial's socket. It is called once the socket exists, so the
// thread leaves the namespace first: the socket stays in it, and the connect and its wait
// run on an ordinary thread. A second socket in the same dial (another address) would be
// made outside the namespace, so it is refused.
func dialControl(t *netnsThread, dst netip.AddrPort, o DialOptions) func(string, string, syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		if t.left {
			return fmt.Errorf("dial in netns %s: %w", t.path, errSecondSocket)
		}
		if err := t.leave(); err != nil {
			return err
		}
		var serr error
		if err := c.Control(func(fd uintptr) { serr = prepareDial(int(fd), dst, o) }); err != nil {
			return err
		}
		return serr
	}
}

// prepareDial marks the socket and, for a transparent dial, binds it ahead of connect.
func prepareDial(fd int, dst netip.AddrPort, o DialOptions) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, Mark); err != nil {
		return fmt.Errorf("set socket mark: %w", err)
	}
	if !o.Source.IsValid() {
		return nil
	}
	src := o.Source.Addr().Unmap()
	// Without IP_TRANSPARENT the socket comes from the destination address, which is the
	// pod's own (the application listens on it); binding it here still lets Bound report
	// the full address before the application can see the connection.
	local := dst.Addr().Unmap()
	if src.Is4() == local.Is4() && setTransparent(fd, src.Is4()) == nil {
		local = src
	}
	if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(local, 0))); err != nil {
		if local != src {
			return nil // let connect choose; Bound is not called
		}
		return fmt.Errorf("bind %s: %w", local, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	bound := addrPortOf(sa)
	if local == src && bound.Port() == o.Source.Port() {
		return errPortClash
	}
	if o.Bound != nil {
		o.Bound(bound)
	}
	return nil
}

// setTransparent sets IP_TRANSPARENT; the kernel refuses it without CAP_NET_ADMIN (or
// CAP_NET_RAW). A variable so that tests can play such a kernel.
var setTransparent = func(fd int, v4 bool) error {
	if v4 {
		return unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
	}
	return unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
}

func addrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}
