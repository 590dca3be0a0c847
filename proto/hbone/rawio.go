package hbone

import (
	"io"
	"net"
	"syscall"
	"unsafe"
)

// Socket reads and writes without the runtime's system-call bookkeeping. A read or write on
// a non-blocking socket never blocks, but an ordinary one still tells the scheduler it may:
// on a busy proxy the scheduler's monitor then hands the thread's processor to another
// thread every time a write into a veth pair takes a few tens of microseconds, and each
// such hand-off costs futex wake-ups and context switches. rawRead and rawWrite skip that;
// waiting for readiness still goes through the netpoller (syscall.RawConn).

func rawRead(fd int, p []byte) (int, error)  { return rawIO(syscall.SYS_READ, fd, p) }
func rawWrite(fd int, p []byte) (int, error) { return rawIO(syscall.SYS_WRITE, fd, p) }

// rawIO is read(2) or write(2) of p on fd.
func rawIO(trap uintptr, fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if trap == syscall.SYS_WRITE {
		raceReleaseMerge()
	}
	n, _, errno := syscall.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if errno != 0 {
		return 0, errno
	}
	if trap == syscall.SYS_READ {
		raceAcquire()
	}
	return int(n), nil
}

// rawConn is a socket whose Read and Write use rawRead and rawWrite; everything else
// (deadlines, close, addresses, half-close) is the socket's own.
type rawConn struct {
	*net.TCPConn
	rc syscall.RawConn
}

// newRawConn wraps c when it is a TCP socket and returns it unchanged otherwise.
func newRawConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawConn{TCPConn: tc, rc: rc}
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return c.read(func() []byte { return p }, func() {})
}

// readFrame waits until the socket is readable, holding no buffer, then reads into a frame
// buffer from frameBufs: m bytes at (*bp)[9:]. The caller puts bp back; bp is nil when
// nothing was read.
func (c *rawConn) readFrame() (bp *[]byte, m int, err error) {
	m, err = c.read(func() []byte {
		bp = frameBufs.Get().(*[]byte)
		return (*bp)[9:]
	}, func() {
		frameBufs.Put(bp)
		bp = nil
	})
	return bp, m, err
}

// read waits until the socket is readable and reads into the buffer that take returns, which
// it asks for only then; when the read brings nothing (a spurious wake-up, the end, an
// error) it hands the buffer back to release.
func (c *rawConn) read(take func() []byte, release func()) (n int, err error) {
	var rerr error
	err = c.rc.Read(func(fd uintptr) bool {
		n, rerr = rawRead(int(fd), take())
		if n > 0 {
			return true
		}
		release()
		return !(rerr == syscall.EAGAIN || rerr == syscall.EINTR)
	})
	if err == nil {
		err = rerr
	}
	if err == nil && n == 0 {
		err = io.EOF
	}
	if err != nil && err != io.EOF {
		err = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, err
}

func (c *rawConn) Write(p []byte) (n int, err error) {
	var werr error
	err = c.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			m, e := rawWrite(int(fd), p[n:])
			n += m
			if e == syscall.EINTR {
				continue
			}
			if e != nil {
				werr = e
				return e != syscall.EAGAIN
			}
		}
		return true
	})
	if err == nil && werr != nil && werr != syscall.EAGAIN {
		err = werr
	}
	if err != nil {
		err = &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, err
}

// ReadFrom and WriteTo would otherwise be promoted from *net.TCPConn and bypass the raw
// Read and Write (splice, sendfile): hide them behind plain io loops.
func (c *rawConn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(struct{ io.Writer }{c}, r) }
func (c *rawConn) WriteTo(w io.Writer) (int64, error)  { return io.Copy(w, struct{ io.Reader }{c}) }
