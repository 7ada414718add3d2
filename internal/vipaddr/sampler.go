package vipaddr

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/netip"
	"os"
	"time"
)

// Sample is one ARP question for the VIP and the MACs that answered.
type Sample struct {
	At   int64    `json:"t"`
	MACs []string `json:"macs"`
	Err  string   `json:"err,omitempty"`
}

// SampleARP asks who has ip, from eth0 and source address src, every 20 ms
// for the duration limit, and writes one JSON Sample per line. Tests and
// benchmarks run it in a client's network namespace to watch VIP holders;
// a sample answered by two MACs means two hosts held the VIP at once.
func SampleARP(w io.Writer, ip, src netip.Addr, limit time.Duration) error {
	end := time.Now().Add(limit)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	bw := bufio.NewWriter(w)
	for time.Now().Before(end) {
		at := time.Now()
		macs, err := Query(context.Background(), "eth0", src, ip, 15*time.Millisecond)
		s := Sample{At: at.UnixNano(), MACs: macs}
		if err != nil {
			s.Err = err.Error()
		}
		b, _ := json.Marshal(s)
		bw.Write(append(b, '\n'))
		if err := bw.Flush(); err != nil {
			return err
		}
		<-tick.C
	}
	return nil
}

// ReadSamples reads SampleARP's output.
func ReadSamples(path string) []Sample {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []Sample
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var s Sample
		if json.Unmarshal(sc.Bytes(), &s) == nil && s.At != 0 {
			out = append(out, s)
		}
	}
	return out
}

// FirstAnswer finds the first sample at or after since answered by exactly
// one MAC other than not.
func FirstAnswer(samples []Sample, since time.Time, not string) (time.Time, string, bool) {
	for _, s := range samples {
		if s.At >= since.UnixNano() && len(s.MACs) == 1 && s.MACs[0] != not {
			return time.Unix(0, s.At), s.MACs[0], true
		}
	}
	return time.Time{}, "", false
}

// Overlaps counts samples answered by more than one MAC.
func Overlaps(samples []Sample) int {
	n := 0
	for _, s := range samples {
		if len(s.MACs) > 1 {
			n++
		}
	}
	return n
}
