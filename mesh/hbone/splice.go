package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
)

// HalfCloser is a connection that can end its write direction alone: *net.TCPConn,
// *tls.Conn and *Stream all are.
type HalfCloser interface {
	net.Conn
	CloseWrite() error
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// CopyBuffered copies src to dst as io.CopyBuffer does, through a pooled 32 KiB buffer
// (io.Copy's size) instead of one allocated per call.
func CopyBuffered(dst io.Writer, src io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	return io.CopyBuffer(dst, src, *bp)
}

// Splice copies both ways between a and b until both directions have ended. When one
// side's reads end cleanly, the other side's write direction is closed, so a half-close
// crosses the splice; the opposite direction keeps flowing. It returns the byte counts
// and the first error other than a clean end. Both connections are closed on return.
func Splice(a, b HalfCloser) (aToB, bToA int64, err error) {
	var (
		wg   sync.WaitGroup
		errs [2]error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		bToA, errs[1] = pipe(a, b)
	}()
	aToB, errs[0] = pipe(b, a)
	wg.Wait()
	a.Close()
	b.Close()
	return aToB, bToA, errors.Join(errs[0], errs[1])
}

// pipe copies src to dst and then ends dst's write side. On a failure both connections are
// closed, so the other direction stops too instead of waiting forever.
func pipe(dst, src HalfCloser) (int64, error) {
	var n int64
	var err error
	// A Stream reads a socket into its own frame buffers (taken only while there are bytes)
	// and writes to one from its queue; two sockets splice in the kernel. None of these
	// holds a copy buffer while the connection idles. The Stream is asked first: io.Copy
	// would prefer the socket's WriteTo, which hides the socket from Stream.ReadFrom.
	if st, ok := dst.(*Stream); ok {
		n, err = st.ReadFrom(src)
	} else if st, ok := src.(*Stream); ok {
		n, err = st.WriteTo(dst)
	} else if _, ok := dst.(io.ReaderFrom); ok {
		n, err = io.Copy(dst, src)
	} else {
		n, err = CopyBuffered(dst, src)
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		dst.Close()
		src.Close()
		return n, err
	}
	_ = dst.CloseWrite()
	return n, nil
}

// Forward is the usual end of an inbound handler: dial the destination, answer 503 if it
// cannot be reached and 200 once it is, then splice until both directions end.
func Forward(ctx context.Context, r *Request, dial func(ctx context.Context, dst netip.AddrPort) (HalfCloser, error)) error {
	up, err := dial(ctx, r.Authority)
	if err != nil {
		_ = r.Reject(503, "destination unreachable: "+err.Error())
		return &Error{Kind: KindDial, Err: err}
	}
	st, err := r.Accept()
	if err != nil {
		up.Close()
		return err
	}
	_, _, err = Splice(st, up)
	return err
}
