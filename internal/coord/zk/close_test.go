package zk_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/testenv"
)

// TestCloseDoesNotStallOperations plays an ensemble that stops answering
// while the store closes: the library's Close then waits up to a second for
// the close-session reply. Another operation on the store must not wait
// behind it; it returns (with an error: the store is closing) while Close
// is still waiting.
func TestCloseDoesNotStallOperations(t *testing.T) {
	ens := testenv.StartEnsemble(t, 1)
	proxy := testenv.StartProxy(t, ens.Addrs()[0])
	s := testenv.OpenZKWith(t, testenv.ZKConfig(t, ens, []string{proxy.Addr()}, ""))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.List(ctx, "/"); err != nil { // the base connection is up
		t.Fatal(err)
	}
	proxy.Pause()
	defer proxy.Resume()
	closed := make(chan struct{})
	go func() { defer close(closed); s.Close() }()
	if err := testenv.WaitFor(ctx, time.Millisecond, func() bool { return inConnClose() }); err != nil {
		t.Fatalf("Close never reached the library's Close: %v", err)
	}
	gctx, gcancel := context.WithTimeout(ctx, 10*time.Second)
	defer gcancel()
	_, err := s.List(gctx, "/")
	select {
	case <-closed:
		t.Fatalf("List returned (err %v) only after Close had finished: it waited behind Close", err)
	default:
	}
	if err == nil {
		t.Fatal("List on a closing store succeeded")
	}
	<-closed
}

// inConnClose reports whether a goroutine is inside the library's
// Conn.Close called from the store's Close.
func inConnClose() bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "go-zookeeper/zk.(*Conn).Close") && strings.Contains(g, "internal/coord/zk.(*Store).Close") {
			return true
		}
	}
	return false
}
