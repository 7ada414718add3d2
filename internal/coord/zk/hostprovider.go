package zk

import (
	"sync"
	"time"

	"github.com/go-zookeeper/zk"
)

// hostProvider cycles through the ensemble like the library's
// DNSHostProvider, but does not pause a whole second after the first pass.
//
// Why: when the server a session uses dies and it was the ensemble's leader,
// the survivors refuse clients until they have elected a new leader (a few
// hundred milliseconds). The library's provider reports "retry from the
// start" after one pass, and the library then sleeps 1 s, so reconnects
// took just over a second. Here further passes follow after 25, 50, 100,
// 200 and 400 ms; only after those (~0.8 s) does it report retryStart, and
// the library then fails queued requests and pauses for a second as usual.
type hostProvider struct {
	mu      sync.Mutex
	servers []string
	curr    int
	last    int
	passes  int
	sleep   func(time.Duration)
}

var _ zk.HostProvider = (*hostProvider)(nil)

const fastPasses = 5

func newHostProvider() *hostProvider { return &hostProvider{curr: -1, last: -1, sleep: time.Sleep} }

// Init implements zk.HostProvider.
func (h *hostProvider) Init(servers []string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.servers = append([]string(nil), servers...)
	return nil
}

// Len implements zk.HostProvider.
func (h *hostProvider) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.servers)
}

// Next implements zk.HostProvider. It runs on the library's connection
// goroutine, its only caller, so its short pauses delay nothing else.
func (h *hostProvider) Next() (string, bool) {
	h.mu.Lock()
	h.curr = (h.curr + 1) % len(h.servers)
	server := h.servers[h.curr]
	if h.last == -1 {
		h.last = h.curr
		h.mu.Unlock()
		return server, false
	}
	if h.curr != h.last {
		h.mu.Unlock()
		return server, false
	}
	// A full pass without a connection.
	h.passes++
	if h.passes > fastPasses {
		h.passes = 0
		h.mu.Unlock()
		return server, true
	}
	pause := time.Duration(25<<(h.passes-1)) * time.Millisecond
	h.mu.Unlock()
	h.sleep(pause)
	return server, false
}

// Connected implements zk.HostProvider.
func (h *hostProvider) Connected() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.last = h.curr
	h.passes = 0
}
