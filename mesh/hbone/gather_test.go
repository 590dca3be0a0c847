package hbone

import (
	"bytes"
	"errors"
	"testing"
)

// writeLog records each Write's length and keeps what was written; it fails the write
// numbered failAt (1-based), after taking half of it.
type writeLog struct {
	bytes.Buffer
	sizes  []int
	failAt int
}

func (w *writeLog) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	if len(w.sizes) == w.failAt {
		w.Buffer.Write(p[:len(p)/2])
		return len(p) / 2, errors.New("write failed")
	}
	return w.Buffer.Write(p)
}

func TestWriteGathered(t *testing.T) {
	var bufs [][]byte
	var want []byte
	for i, n := range []int{pageSize, pageSize, 100, pageSize, pageSize, pageSize, 7, pageSize} {
		b := bytes.Repeat([]byte{byte('a' + i)}, n)
		bufs = append(bufs, b)
		want = append(want, b...)
	}
	var w writeLog
	n, err := writeGathered(&w, bufs)
	if err != nil || n != int64(len(want)) || !bytes.Equal(w.Bytes(), want) {
		t.Fatalf("wrote %d of %d bytes (%v), same bytes: %v", n, len(want), err, bytes.Equal(w.Bytes(), want))
	}
	// Full DATA payloads, then the rest: two writes where there were eight pages.
	if len(w.sizes) != 2 || w.sizes[0] != maxDataPayload || w.sizes[1] != len(want)-maxDataPayload {
		t.Fatalf("write sizes %v, want [%d %d]", w.sizes, maxDataPayload, len(want)-maxDataPayload)
	}
	// A failed write stops it, and the count says what went.
	f := writeLog{failAt: 2}
	n, err = writeGathered(&f, bufs)
	if err == nil || n != int64(maxDataPayload+(len(want)-maxDataPayload)/2) || int64(f.Len()) != n {
		t.Fatalf("after a failed second write: %d bytes, %v (buffer holds %d)", n, err, f.Len())
	}
}
