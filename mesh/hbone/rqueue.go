package hbone

import (
	"sync"
	"syscall"
)

// pageSize matches the largest DATA payload we normally receive, so a frame lands in at
// most two pages.
const pageSize = 16 << 10

var pages = sync.Pool{New: func() any { b := make([]byte, 0, pageSize); return &b }}

func getPage() []byte { return (*pages.Get().(*[]byte))[:0] }

func putPage(p []byte) {
	if cap(p) != pageSize {
		return
	}
	p = p[:0]
	pages.Put(&p)
}

// rqueue buffers received bytes for one stream as a list of pooled pages, so a burst up
// to the stream window costs no reallocation and an idle stream holds no memory.
type rqueue struct {
	pages [][]byte
	off   int // read offset into pages[0]
	n     int // bytes buffered
}

func (q *rqueue) len() int { return q.n }

func (q *rqueue) push(p []byte) {
	q.n += len(p)
	for len(p) > 0 {
		last := len(q.pages) - 1
		if last < 0 || len(q.pages[last]) == cap(q.pages[last]) {
			q.pages = append(q.pages, getPage())
			last++
		}
		pg := q.pages[last]
		k := copy(pg[len(pg):cap(pg)], p)
		q.pages[last] = pg[:len(pg)+k]
		p = p[k:]
	}
}

// read copies buffered bytes into dst.
func (q *rqueue) read(dst []byte) int {
	total := 0
	for len(dst) > 0 && len(q.pages) > 0 {
		k := copy(dst, q.pages[0][q.off:])
		total += k
		dst = dst[k:]
		q.off += k
		if q.off == len(q.pages[0]) {
			q.popFront()
		}
	}
	q.n -= total
	return total
}

func (q *rqueue) popFront() {
	putPage(q.pages[0])
	q.pages[0] = nil
	q.pages = q.pages[1:]
	q.off = 0
	if len(q.pages) == 0 {
		q.pages = nil
	}
}

// take detaches every buffered page for a writer to send without copying; the caller
// returns them with release.
func (q *rqueue) take() (bufs [][]byte, n int) {
	bufs = q.pages
	if len(bufs) > 0 {
		bufs[0] = bufs[0][q.off:]
	}
	n = q.n
	q.pages, q.off, q.n = nil, 0, 0
	return bufs, n
}

func release(bufs [][]byte) {
	for _, b := range bufs {
		putPage(b[:0:cap(b)])
	}
}

// tryWrite writes as much of p as the socket takes without blocking and reports how much
// that was. The read loop uses it to hand data straight to the destination socket. The
// callback is built once per stream so the hot path does not allocate.
func (s *Stream) tryWrite(rc syscall.RawConn, p []byte) int {
	if s.tryFn == nil {
		s.tryFn = func(fd uintptr) bool {
			for s.tryN < len(s.tryBuf) {
				m, err := rawWrite(int(fd), s.tryBuf[s.tryN:])
				if m > 0 {
					s.tryN += m
					continue
				}
				if err == syscall.EINTR {
					continue
				}
				break
			}
			return true // never wait: what did not fit is queued for the stream's writer
		}
	}
	s.tryBuf, s.tryN = p, 0
	_ = rc.Write(s.tryFn)
	n := s.tryN
	s.tryBuf = nil
	return n
}
