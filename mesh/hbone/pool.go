package hbone

import (
	"context"
	"slices"
	"sync"
	"time"
)

// The client's connection pool, one per protocol: the HTTP/2 and HTTP/3 sides share this
// code so that a fix to one (who counts as a dial's waiter, when a key is dropped) cannot
// miss the other.

// pooledConn is what a pool needs of a client connection; C is the connection type itself.
type pooledConn[C any] interface {
	comparable
	// reserve promises the caller a stream slot; it fails when the connection is full
	// (limit streams, or fewer if the peer allows fewer) or dying.
	reserve(limit uint32) bool
	// pooled tells a new connection that the pool holds it: it must call onClose once it
	// is dead, and may start serving. The pool calls it under its lock, so it must neither
	// block nor call onClose before returning.
	pooled(onClose func(C))
	// closeClient closes the connection because the client is closing.
	closeClient()
}

// pool holds one protocol's connections per key, and the dials in flight for each key so
// that a burst of streams shares new connections instead of each dialling its own.
type pool[C pooledConn[C]] struct {
	limit   uint32        // streams per connection (MaxStreams)
	timeout time.Duration // bounds one dial (HandshakeTimeout)
	// connect establishes one connection; ctx is the dial's, never a caller's.
	connect func(ctx context.Context, t Target) (C, error)

	mu     sync.Mutex
	keys   map[poolKey]*keyConns[C]
	closed bool
}

// keyConns are the connections of one key and the dials in flight for it. A key with
// neither is dropped from the pool.
type keyConns[C pooledConn[C]] struct {
	conns   []C
	pending []*pendingDial[C]
}

// pendingDial is a dial shared by the callers that found no free slot: the first starts
// it, the next ones join it until it is promised as many streams as a connection holds.
type pendingDial[C pooledConn[C]] struct {
	done    chan struct{}
	c       C
	err     error
	waiters uint32 // streams promised to this dial, including the dialler's own
}

func newPool[C pooledConn[C]](limit uint32, timeout time.Duration, connect func(context.Context, Target) (C, error)) *pool[C] {
	return &pool[C]{limit: limit, timeout: timeout, connect: connect, keys: make(map[poolKey]*keyConns[C])}
}

func errClientClosed() error { return &Error{Kind: KindDial, Reason: "client closed"} }

// acquire returns a connection for t with a stream slot reserved for the caller.
func (p *pool[C]) acquire(ctx context.Context, t Target) (C, error) {
	var none C
	key := keyOf(t)
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return none, errClientClosed()
		}
		k := p.keys[key]
		if k == nil {
			k = &keyConns[C]{}
			p.keys[key] = k
		}
		for _, cn := range k.conns {
			if cn.reserve(p.limit) {
				p.mu.Unlock()
				return cn, nil
			}
		}
		var pd *pendingDial[C]
		for _, d := range k.pending {
			if d.waiters < p.limit {
				pd = d
				pd.waiters++
				break
			}
		}
		if pd == nil {
			pd = &pendingDial[C]{done: make(chan struct{}), waiters: 1}
			k.pending = append(k.pending, pd)
			go p.dial(key, t, pd)
		}
		p.mu.Unlock()

		select {
		case <-pd.done:
		case <-ctx.Done():
			// A caller that gives up no longer counts against the dial's waiters; otherwise
			// every abandoned wait would make a later caller start another dial, and pool
			// one more connection, as if it were a burst.
			p.mu.Lock()
			pd.waiters--
			p.mu.Unlock()
			return none, &Error{Kind: KindDial, Err: ctx.Err()}
		}
		if pd.err != nil {
			return none, pd.err
		}
		if pd.c.reserve(p.limit) {
			return pd.c, nil
		}
		// The new connection filled up (the peer allows fewer streams than we hoped):
		// go round again.
	}
}

// dial establishes one pooled connection. It runs detached from any caller's context so
// that a cancelled caller does not fail the others waiting on the same dial.
func (p *pool[C]) dial(key poolKey, t Target, pd *pendingDial[C]) {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	cn, err := p.connect(ctx, t)
	refused := false
	p.mu.Lock()
	k := p.keys[key]
	if k != nil {
		k.pending = slices.DeleteFunc(k.pending, func(d *pendingDial[C]) bool { return d == pd })
	}
	switch {
	case err == nil && (p.closed || k == nil):
		err, refused = errClientClosed(), true
	case err == nil:
		k.conns = append(k.conns, cn)
		cn.pooled(func(dead C) { p.forget(key, dead) })
	case k != nil && len(k.conns) == 0 && len(k.pending) == 0:
		// A failed dial leaves no empty key behind.
		delete(p.keys, key)
	}
	p.mu.Unlock()
	if refused {
		cn.closeClient()
	}
	pd.c, pd.err = cn, err
	close(pd.done)
}

// forget drops a dead connection from its key.
func (p *pool[C]) forget(key poolKey, dead C) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := p.keys[key]
	if k == nil {
		return
	}
	k.conns = slices.DeleteFunc(k.conns, func(cn C) bool { return cn == dead })
	if len(k.conns) == 0 && len(k.pending) == 0 {
		delete(p.keys, key)
	}
}

// conns counts the pooled connections.
func (p *pool[C]) conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, k := range p.keys {
		n += len(k.conns)
	}
	return n
}

// closeAll closes every pooled connection and refuses new ones; it returns once they are
// closed.
func (p *pool[C]) closeAll() {
	p.mu.Lock()
	p.closed = true
	var all []C
	for _, k := range p.keys {
		all = append(all, k.conns...)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, cn := range all {
		wg.Go(cn.closeClient)
	}
	wg.Wait()
}
