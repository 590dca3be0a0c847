package hbone

import (
	"io"
	"net"
	"sync"
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

	// The read and write callbacks are made once, with their state here, so that a read or
	// a write allocates nothing. A socket has one reader and one writer at a time.
	readFn, writeFn func(fd uintptr) bool
	rbuf            []byte  // Read's buffer, or nil: take a frame buffer
	rbp             *[]byte // the frame buffer taken, if any
	rn              int
	rerr            error
	wbuf            []byte
	wn              int
	werr            error

	// While gathering (gatherWrites), gbuf is not nil and Write appends to it instead of
	// writing. wmu guards it and serializes socket writes: the gathered records go out after
	// TLS has let go of its own lock, and TLS may write an alert from another goroutine
	// meanwhile.
	wmu  sync.Mutex
	gbuf *[]byte
}

// gatherBufs hold the TLS records of one DATA frame: four full records and their overhead.
var gatherBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4*(1<<14+5+1+16)+512); return &b }}

// gatherWrites runs write with every Write to c in between gathered into one write(2):
// crypto/tls writes each record of a large Write on its own, and each write into a veth
// pair runs the receiver's network stack and may wake it. Nested calls gather into the
// outermost one. What write left gathered is written even when write fails; the error
// returned is write's, or else the socket's.
func (c *rawConn) gatherWrites(write func() error) error {
	c.wmu.Lock()
	if c.gbuf != nil {
		c.wmu.Unlock()
		return write()
	}
	c.gbuf = gatherBufs.Get().(*[]byte)
	c.wmu.Unlock()
	err := write()
	c.wmu.Lock()
	bp := c.gbuf
	c.gbuf = nil
	if len(*bp) > 0 {
		if _, werr := c.writeLocked(*bp); err == nil {
			err = werr
		}
	}
	c.wmu.Unlock()
	*bp = (*bp)[:0]
	gatherBufs.Put(bp)
	return err
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
	rw := &rawConn{TCPConn: tc, rc: rc}
	rw.readFn, rw.writeFn = rw.onReadable, rw.onWritable
	return rw
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rbuf = p
	n, err := c.read()
	c.rbuf = nil
	return n, err
}

// readFrame waits until the socket is readable, holding no buffer, then reads into a frame
// buffer from frameBufs: m bytes at (*bp)[9:]. The caller puts bp back; bp is nil when
// nothing was read.
func (c *rawConn) readFrame() (bp *[]byte, m int, err error) {
	m, err = c.read()
	bp, c.rbp = c.rbp, nil
	return bp, m, err
}

// onReadable reads into rbuf, or into a frame buffer taken only now; a read that brings
// nothing (a spurious wake-up, the end, an error) gives the frame buffer back.
func (c *rawConn) onReadable(fd uintptr) bool {
	buf := c.rbuf
	if buf == nil {
		c.rbp = frameBufs.Get().(*[]byte)
		buf = (*c.rbp)[9:]
	}
	c.rn, c.rerr = rawRead(int(fd), buf)
	if c.rn > 0 {
		return true
	}
	if c.rbp != nil {
		frameBufs.Put(c.rbp)
		c.rbp = nil
	}
	return !(c.rerr == syscall.EAGAIN || c.rerr == syscall.EINTR)
}

func (c *rawConn) read() (int, error) {
	c.rn, c.rerr = 0, nil
	err := c.rc.Read(c.readFn)
	n := c.rn
	if err == nil {
		err = c.rerr
	}
	if err == nil && n == 0 {
		err = io.EOF
	}
	if err != nil && err != io.EOF {
		err = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, err
}

func (c *rawConn) onWritable(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		m, e := rawWrite(int(fd), c.wbuf[c.wn:])
		c.wn += m
		if e == syscall.EINTR {
			continue
		}
		if e != nil {
			c.werr = e
			return e != syscall.EAGAIN
		}
	}
	return true
}

func (c *rawConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.gbuf != nil {
		*c.gbuf = append(*c.gbuf, p...)
		return len(p), nil
	}
	return c.writeLocked(p)
}

func (c *rawConn) writeLocked(p []byte) (int, error) {
	c.wbuf, c.wn, c.werr = p, 0, nil
	err := c.rc.Write(c.writeFn)
	n, werr := c.wn, c.werr
	c.wbuf = nil
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
