package artifacts

import (
	"context"
	"sync"
)

// keyedLocks serialises work on one artifact file (its upload) within this
// process, waiting with a context.
type keyedLocks struct {
	mu   sync.Mutex
	held map[int64]*keyLock
}

type keyLock struct {
	ch   chan struct{}
	refs int
}

// lock takes the lock of id, or returns ctx's error if ctx ends first.
func (k *keyedLocks) lock(ctx context.Context, id int64) (unlock func(), err error) {
	k.mu.Lock()
	if k.held == nil {
		k.held = map[int64]*keyLock{}
	}
	l := k.held[id]
	if l == nil {
		l = &keyLock{ch: make(chan struct{}, 1)}
		k.held[id] = l
	}
	l.refs++
	k.mu.Unlock()
	select {
	case l.ch <- struct{}{}:
		return func() {
			<-l.ch
			k.release(id, l)
		}, nil
	case <-ctx.Done():
		k.release(id, l)
		return nil, ctx.Err()
	}
}

func (k *keyedLocks) release(id int64, l *keyLock) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l.refs--
	if l.refs == 0 {
		delete(k.held, id)
	}
}
