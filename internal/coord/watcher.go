package coord

import (
	"context"
	"sync"
)

// Watcher is one running watch of a directory (see Store.Watch). Its owner
// reads Events and calls Close when done with it, typically deferred right
// after Watch: Close cancels the watch and returns only after the goroutine
// behind it has ended, so no watch outlives the component that started it.
type Watcher struct {
	events <-chan Event
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// StartWatcher runs follow in a goroutine owned by the returned Watcher; for
// backends. follow sends to out, selecting on ctx for every send, and
// returns when ctx ends; the Events channel is closed after it has returned.
func StartWatcher(ctx context.Context, follow func(ctx context.Context, out chan<- Event)) *Watcher {
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan Event, WatchBuffer)
	w := &Watcher{events: out, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer close(out)
		follow(ctx, out)
	}()
	return w
}

// Events delivers the directory's contents, EventSynced, then every change.
// It is closed once the watch has stopped (its context ended or Close).
func (w *Watcher) Events() <-chan Event { return w.events }

// Close stops the watch, drops any events still queued and returns once the
// watch goroutine has ended. It may be called more than once, and from
// another goroutine than the reader.
func (w *Watcher) Close() {
	w.once.Do(w.cancel)
	for range w.events { // closed once follow has returned
	}
	<-w.done
}

// Done is closed once the watch goroutine has ended.
func (w *Watcher) Done() <-chan struct{} { return w.done }
