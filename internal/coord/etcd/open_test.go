package etcd_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/coord/etcd"
)

// TestOpenStopsWhenCancelledDuringLogin: an etcd that accepts connections
// and never answers (a server too busy to log anyone in) holds Open in its
// first attempt, whose timeout is 2 s. Cancelling Open's context must end
// the attempt at once: a node asked to stop during start-up does not wait
// out a login (the timeout grows to 32 s on later attempts).
func TestOpenStopsWhenCancelledDuringLogin(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{})
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if len(conns) == 0 {
				close(accepted)
			}
			conns = append(conns, c) // held open, never answered
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cc := etcd.ClientConfig{Endpoints: []string{"http://" + ln.Addr().String()}, Username: "taskd", Password: "x"}
	done := make(chan error, 1)
	go func() {
		_, err := etcd.Open(ctx, cc, quiet)
		done <- err
	}()
	select {
	case <-accepted:
	case err := <-done:
		t.Fatalf("Open returned before it connected: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Open never connected to the listener")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Open after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(time.Second): // the first attempt's own timeout is 2 s
		t.Fatal("Open kept logging in for over a second after its context was cancelled")
	}
}
