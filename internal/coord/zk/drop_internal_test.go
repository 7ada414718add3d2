package zk

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestDropServerOnlyCurrent: a ping that gave up drops the connection its
// sync went out on, and only while the library still uses it and has read
// nothing since the sync. Once the library has moved to another server,
// that healthy connection stays up.
func TestDropServerOnlyCurrent(t *testing.T) {
	c := &conn{}
	var peers []net.Conn
	dial := c.tracked(func(string, string, time.Duration) (net.Conn, error) {
		ours, theirs := net.Pipe()
		peers = append(peers, theirs)
		// Closing both ends also ends a writer below if the test stops
		// early (the package's TestMain fails on leftover goroutines).
		t.Cleanup(func() { ours.Close(); theirs.Close() })
		return ours, nil
	})
	if c.dropQuiet(c.current(), time.Now()) {
		t.Fatal("dropped a connection before any was dialled")
	}
	first, err := dial("tcp", "a:1", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	old := c.current()
	if net.Conn(old) != first {
		t.Fatal("current is not the connection just dialled")
	}
	second, err := dial("tcp", "b:1", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if c.dropQuiet(old, time.Now()) {
		t.Fatal("dropped a connection the library had already replaced")
	}
	if open(second) != nil {
		t.Fatal("the current connection was closed by a drop of the old one")
	}
	// A connection that read something since the probe went out is slow,
	// not hung: it stays.
	probe := time.Now()
	go peers[1].Write([]byte("answer"))
	if _, err := second.Read(make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	if c.dropQuiet(c.current(), probe) {
		t.Fatal("dropped a connection that read an answer after the probe")
	}
	if !c.dropQuiet(c.current(), time.Now()) {
		t.Fatal("the current connection was not dropped")
	}
	if err := open(second); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("after the drop the connection answers %v, want it closed", err)
	}
}

// open reports a write's error on nc without blocking: nil for an open
// pipe whose peer does not read (the deadline ends the write).
func open(nc net.Conn) error {
	nc.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
	_, err := nc.Write([]byte{0})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}
