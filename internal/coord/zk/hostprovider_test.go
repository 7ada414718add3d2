package zk

import (
	"testing"
	"time"
)

func TestHostProviderPasses(t *testing.T) {
	h := newHostProvider()
	var slept []time.Duration
	h.sleep = func(d time.Duration) { slept = append(slept, d) }
	if err := h.Init([]string{"a:1", "b:1", "c:1"}); err != nil {
		t.Fatal(err)
	}
	// Connected to "a", then it fails: b and c are tried at once.
	if s, retry := h.Next(); s != "a:1" || retry {
		t.Fatalf("first = %s %v", s, retry)
	}
	h.Connected()
	for _, want := range []string{"b:1", "c:1"} {
		if s, retry := h.Next(); s != want || retry || len(slept) != 0 {
			t.Fatalf("next = %s %v slept %v, want %s at once", s, retry, slept, want)
		}
	}
	// Full passes: short growing pauses, then the library's retry.
	var retries int
	for range 3 * (fastPasses + 1) {
		if _, retry := h.Next(); retry {
			retries++
		}
	}
	want := []time.Duration{25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}
	if len(slept) != len(want) || retries != 1 {
		t.Fatalf("slept %v retries %d, want %v then one retryStart", slept, retries, want)
	}
	for i := range want {
		if slept[i] != want[i] {
			t.Fatalf("slept %v, want %v", slept, want)
		}
	}
	// A connection resets the passes.
	h.Connected()
	slept = nil
	h.Next()
	h.Next()
	if len(slept) != 0 {
		t.Fatalf("paused %v right after a connection", slept)
	}
}
