package load

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Level is what RunHold reports each time it has opened the connections it was asked for.
type Level struct {
	// Want is the count asked for; Held how many are open, each proven end to end.
	Want int `json:"want"`
	Held int `json:"held"`
	// Errors counts the connections of this level that failed to open or to echo; FirstError
	// says why the first did. A level with errors stops opening early.
	Errors     int    `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
	// OpenSeconds is how long the level's new connections took.
	OpenSeconds float64 `json:"open_s"`
}

// holdParallel is how many connections RunHold opens at a time.
const holdParallel = 64

// holdDialTimeout bounds the opening and the echo of one connection.
const holdDialTimeout = 10 * time.Second

// RunHold opens idle connections to c.Target, an echo server, and keeps them open: for every
// line of in, a count at least the last and at most c.Connections, it opens connections
// until it holds that many, each proven end to end by one byte sent and the same byte
// echoed back, and writes a Level as a JSON line to out. It closes them all and returns when
// in ends, when ctx ends or when c.Duration has passed since it started, whichever comes
// first: a holder whose caller went away does not hold connections for ever.
//
// The line reader on in ends only when in does.
func RunHold(ctx context.Context, c Config, in io.Reader, out io.Writer) error {
	c.Mode = Hold
	if err := c.Validate(); err != nil {
		return err
	}
	if err := raiseFileLimit(c.Connections + 256); err != nil {
		return err
	}
	hctx, cancel := context.WithTimeout(ctx, c.Duration)
	defer cancel()

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			select {
			case lines <- strings.TrimSpace(sc.Text()):
			case <-hctx.Done():
				return
			}
		}
	}()

	var held []net.Conn
	defer func() {
		for _, conn := range held {
			conn.Close()
		}
	}()
	enc := json.NewEncoder(out)
	for {
		var line string
		var ok bool
		select {
		case <-hctx.Done():
			return ctx.Err() // nil when the deadline ended it
		case line, ok = <-lines:
		}
		if !ok {
			return nil
		}
		if line == "" {
			continue
		}
		want, err := strconv.Atoi(line)
		if err != nil || want < len(held) || want > c.Connections {
			return fmt.Errorf("hold: %q is not a count from %d to %d", line, len(held), c.Connections)
		}
		start := time.Now()
		opened, errs := openEchoed(hctx, c.Target, len(held), want)
		held = append(held, opened...)
		lv := Level{Want: want, Held: len(held), Errors: len(errs), OpenSeconds: time.Since(start).Seconds()}
		if len(errs) > 0 {
			lv.FirstError = errs[0].Error()
		}
		if err := enc.Encode(lv); err != nil {
			return fmt.Errorf("hold: report: %w", err)
		}
	}
}

// openEchoed opens the connections from..want-1 to target, holdParallel at a time, each
// proven by one byte echoed; after the first failure it opens no more.
func openEchoed(ctx context.Context, target string, from, want int) ([]net.Conn, []error) {
	var (
		mu     sync.Mutex
		opened []net.Conn
		errs   []error
		wg     sync.WaitGroup
	)
	next := make(chan int)
	for range holdParallel {
		wg.Go(func() {
			for i := range next {
				conn, err := openOne(ctx, target, byte(i))
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("connection %d: %w", i, err))
				} else {
					opened = append(opened, conn)
				}
				mu.Unlock()
			}
		})
	}
	for i := from; i < want; i++ {
		mu.Lock()
		failed := len(errs) > 0
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	return opened, errs
}

func openOne(ctx context.Context, target string, b byte) (net.Conn, error) {
	d := net.Dialer{Timeout: holdDialTimeout}
	conn, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(holdDialTimeout))
	got := []byte{0}
	if _, err = conn.Write([]byte{b}); err == nil {
		_, err = io.ReadFull(conn, got)
	}
	if err == nil && got[0] != b {
		err = fmt.Errorf("echoed %#x, want %#x", got[0], b)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("echo: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// raiseFileLimit raises the soft limit of open files to the hard limit, and fails when even
// that is below need.
func raiseFileLimit(need int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("hold: file limit: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("hold: raise the file limit to %d: %w", lim.Max, err)
		}
	}
	if lim.Cur < uint64(need) {
		return fmt.Errorf("hold: %d files needed, the hard limit is %d", need, lim.Max)
	}
	return nil
}
