package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// Reply builders for the tests and the fuzz corpus.

func simpleReply(cookie uint64, errno uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicSimple)
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return append(b, data...)
}

func chunkReply(cookie uint64, flags, typ uint16, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicStructure)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

func offsetData(off uint64, data []byte) []byte {
	return append(binary.BigEndian.AppendUint64(nil, off), data...)
}

func offsetHole(off uint64, n uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, off), n)
}

func statusPayload(id uint32, ext ...[2]uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, id)
	for _, e := range ext {
		b = binary.BigEndian.AppendUint32(b, e[0])
		b = binary.BigEndian.AppendUint32(b, e[1])
	}
	return b
}

func errorPayload(errno uint32, msg string) []byte {
	b := binary.BigEndian.AppendUint32(nil, errno)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// pendingSet is what the fuzz target and table tests parse against: a READ
// of 8 KiB at 4096 (cookie 1) and a BLOCK_STATUS for context 7 (cookie 2).
func pendingSet() map[uint64]*request {
	return map[uint64]*request{
		1: {cmd: cmdRead, offset: 4096, length: 8192, buf: make([]byte, 8192)},
		2: {cmd: cmdBlockStatus, offset: 0, length: 1 << 20, status: map[uint32][]Extent{7: nil}},
	}
}

// parseAll feeds data to a replyReader until it fails or the input ends.
func parseAll(data []byte, structured bool) (finals int, err error) {
	pending := pendingSet()
	rr := &replyReader{r: bufio.NewReader(bytes.NewReader(data)), structured: structured,
		lookup: func(c uint64) *request { return pending[c] }}
	for {
		cookie, req, final, err := rr.next()
		if err != nil {
			return finals, err
		}
		if final {
			if req == nil {
				return finals, errors.New("final without request")
			}
			if structured && req.cmd == cmdRead && req.err == nil && req.cov.total != uint64(req.length) {
				return finals, fmt.Errorf("READ completed with %d of %d bytes covered", req.cov.total, req.length)
			}
			delete(pending, cookie)
			finals++
		}
	}
}

func TestReplyParser(t *testing.T) {
	data := bytes.Repeat([]byte{0x5a}, 8192)
	cases := []struct {
		name      string
		in        []byte
		wantProto bool // a ProtocolError, rather than a clean end of input
		finals    int
	}{
		{"structured read in two chunks", append(
			chunkReply(1, 0, chunkOffsetData, offsetData(4096, data[:4096])),
			chunkReply(1, replyFlagDone, chunkOffsetHole, offsetHole(8192, 4096))...), false, 1},
		{"block status", chunkReply(2, replyFlagDone, chunkBlockStatus, statusPayload(7, [2]uint32{4096, 3}, [2]uint32{1 << 19, 0})), false, 1},
		{"error chunk", chunkReply(1, replyFlagDone, chunkError, errorPayload(EIO, "disk on fire")), false, 1},
		{"simple error", simpleReply(2, EINVAL, nil), false, 1},
		{"bad magic", []byte{1, 2, 3, 4}, true, 0},
		{"unknown cookie", chunkReply(99, replyFlagDone, chunkNone, nil), true, 0},
		{"data beyond request", chunkReply(1, replyFlagDone, chunkOffsetData, offsetData(8192, data)), true, 0},
		{"data before request", chunkReply(1, replyFlagDone, chunkOffsetData, offsetData(0, data[:10])), true, 0},
		{"hole beyond request", chunkReply(1, replyFlagDone, chunkOffsetHole, offsetHole(4096, 1<<20)), true, 0},
		{"offset overflow", chunkReply(1, replyFlagDone, chunkOffsetData, offsetData(1<<64-1, data[:10])), true, 0},
		{"short payload", chunkReply(1, replyFlagDone, chunkOffsetData, offsetData(4096, data[:100]))[:60], true, 0},
		{"oversized status", append(chunkReply(2, replyFlagDone, chunkBlockStatus, nil)[:16], 0x7f, 0xff, 0xff, 0xff), true, 0},
		{"status for unknown context", chunkReply(2, replyFlagDone, chunkBlockStatus, statusPayload(8, [2]uint32{4096, 0})), true, 0},
		{"status zero-length extent", chunkReply(2, replyFlagDone, chunkBlockStatus, statusPayload(7, [2]uint32{0, 0})), true, 0},
		{"data chunk for block status", chunkReply(2, replyFlagDone, chunkOffsetData, offsetData(0, data[:8])), true, 0},
		{"error message length lies", chunkReply(1, replyFlagDone, chunkError, append(errorPayload(EIO, "x")[:4], 0x10, 0x00, 'x')), true, 0},
		{"none with payload", chunkReply(1, replyFlagDone, chunkNone, []byte{1}), true, 0},
		{"simple read data after structured", simpleReply(1, 0, data), true, 0},
		{"read answered NONE+DONE", chunkReply(1, replyFlagDone, chunkNone, nil), true, 0},
		{"read half covered", chunkReply(1, replyFlagDone, chunkOffsetData, offsetData(4096, data[:4096])), true, 0},
		{"read with a gap", append(
			chunkReply(1, 0, chunkOffsetData, offsetData(4096, data[:4096])),
			chunkReply(1, replyFlagDone, chunkOffsetHole, offsetHole(8192+512, 4096-512))...), true, 0},
		{"read chunks overlap", append(
			chunkReply(1, 0, chunkOffsetData, offsetData(4096, data[:4096+512])),
			chunkReply(1, replyFlagDone, chunkOffsetHole, offsetHole(8192, 4096))...), true, 0},
		{"read chunk twice", append(append(
			chunkReply(1, 0, chunkOffsetHole, offsetHole(4096, 4096)),
			chunkReply(1, 0, chunkOffsetHole, offsetHole(4096, 4096))...),
			chunkReply(1, replyFlagDone, chunkOffsetHole, offsetHole(8192, 4096))...), true, 0},
		{"read chunks out of order", append(append(
			chunkReply(1, 0, chunkOffsetHole, offsetHole(8192, 4096)),
			chunkReply(1, 0, chunkOffsetData, offsetData(4096, data[:2048]))...),
			chunkReply(1, replyFlagDone, chunkOffsetData, offsetData(4096+2048, data[:2048]))...), false, 1},
		{"read error after partial data", append(
			chunkReply(1, 0, chunkOffsetData, offsetData(4096, data[:100])),
			chunkReply(1, replyFlagDone, chunkError, errorPayload(EIO, "bad sector"))...), false, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			finals, err := parseAll(tc.in, true)
			var pe *ProtocolError
			if tc.wantProto != errors.As(err, &pe) {
				t.Fatalf("err = %v, want protocol error: %v", err, tc.wantProto)
			}
			if !tc.wantProto && !errors.Is(err, io.EOF) {
				t.Fatalf("err = %v, want a clean end of input", err)
			}
			if finals != tc.finals {
				t.Fatalf("%d requests completed, want %d", finals, tc.finals)
			}
		})
	}
}

func FuzzReplyParser(f *testing.F) {
	data := bytes.Repeat([]byte{0x5a}, 4096)
	f.Add(chunkReply(1, replyFlagDone, chunkOffsetData, offsetData(4096, data)), true)
	f.Add(chunkReply(1, replyFlagDone, chunkOffsetHole, offsetHole(4096, 8192)), true)
	f.Add(chunkReply(2, replyFlagDone, chunkBlockStatus, statusPayload(7, [2]uint32{4096, 3})), true)
	f.Add(chunkReply(1, replyFlagDone, chunkErrorOffset, append(errorPayload(EIO, "m"), 0, 0, 0, 0, 0, 0, 0x10, 0)), true)
	f.Add(simpleReply(1, 0, make([]byte, 8192)), false)
	f.Fuzz(func(t *testing.T, in []byte, structured bool) {
		// Must never panic or hang; every error is a value.
		_, _ = parseAll(in, structured)
	})
}

// scriptedServer does a real fixed-newstyle handshake on a socket, then
// answers each request with whatever reply returns. It stands in for a
// broken server, which the real ones cannot be made to be.
func scriptedServer(t *testing.T, size uint64, reply func(cmd uint16, cookie, off uint64, n uint32) []byte) Target {
	t.Helper()
	ln, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		serveScript(nc, size, reply)
	}()
	return Target{Network: "unix", Address: ln.Addr().String(), Export: "x"}
}

// hangUp at the end of a scripted reply makes the server close the
// connection after sending the rest.
var hangUp = []byte("\x00HANGUP\x00")

func serveScript(nc net.Conn, size uint64, reply func(cmd uint16, cookie, off uint64, n uint32) []byte) {
	br := bufio.NewReader(nc)
	greet := binary.BigEndian.AppendUint64(nil, magicNBD)
	greet = binary.BigEndian.AppendUint64(greet, magicIHaveOpt)
	greet = binary.BigEndian.AppendUint16(greet, flagFixedNewstyle|flagNoZeroes)
	nc.Write(greet)
	var cf [4]byte
	if _, err := io.ReadFull(br, cf[:]); err != nil {
		return
	}
	optReply := func(opt, typ uint32, data []byte) {
		b := binary.BigEndian.AppendUint64(nil, magicOptReply)
		b = binary.BigEndian.AppendUint32(b, opt)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		nc.Write(append(b, data...))
	}
	for {
		var h [16]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return
		}
		opt := binary.BigEndian.Uint32(h[8:12])
		if _, err := io.CopyN(io.Discard, br, int64(binary.BigEndian.Uint32(h[12:16]))); err != nil {
			return
		}
		switch opt {
		case optStructuredRepl:
			optReply(opt, repAck, nil)
		case optSetMetaContext:
			optReply(opt, repMetaContext, append(binary.BigEndian.AppendUint32(nil, 7), ContextAllocation...))
			optReply(opt, repAck, nil)
		case optGo:
			info := binary.BigEndian.AppendUint16(nil, infoExport)
			info = binary.BigEndian.AppendUint64(info, size)
			info = binary.BigEndian.AppendUint16(info, tflagHasFlags|tflagSendFlush)
			optReply(opt, repInfo, info)
			optReply(opt, repAck, nil)
			goto transmission
		default:
			optReply(opt, repErrBit|1, nil)
		}
	}
transmission:
	for {
		var h [28]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return
		}
		cmd := binary.BigEndian.Uint16(h[6:8])
		n := binary.BigEndian.Uint32(h[24:28])
		if cmd == cmdWrite {
			io.CopyN(io.Discard, br, int64(n))
		}
		out := reply(cmd, binary.BigEndian.Uint64(h[8:16]), binary.BigEndian.Uint64(h[16:24]), n)
		out, hang := bytes.CutSuffix(out, hangUp)
		if _, err := nc.Write(out); err != nil || hang {
			return
		}
	}
}

func TestSilentServerTimesOut(t *testing.T) {
	target := scriptedServer(t, 1<<20, func(uint16, uint64, uint64, uint32) []byte { return []byte{} })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, target, Options{Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.ReadAt(ctx, make([]byte, 4096), 0)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the request waited for the test's own deadline instead of the timeout")
	}
}

func TestBrokenServerRepliesFailCleanly(t *testing.T) {
	cases := []struct {
		name  string
		reply func(cmd uint16, cookie, off uint64, n uint32) []byte
	}{
		{"short reply then hang-up", func(_ uint16, cookie, off uint64, n uint32) []byte {
			return append(chunkReply(cookie, replyFlagDone, chunkOffsetData, offsetData(off, make([]byte, n)))[:40], hangUp...)
		}},
		{"oversized reply", func(_ uint16, cookie, off uint64, n uint32) []byte {
			return chunkReply(cookie, replyFlagDone, chunkOffsetData, offsetData(off, make([]byte, n+4096)))
		}},
		{"reply to another cookie", func(_ uint16, cookie, off uint64, n uint32) []byte {
			return chunkReply(cookie+1000, replyFlagDone, chunkNone, nil)
		}},
		{"NONE+DONE answer to a read", func(_ uint16, cookie, off uint64, n uint32) []byte {
			return chunkReply(cookie, replyFlagDone, chunkNone, nil)
		}},
		{"read answered for its first half only", func(_ uint16, cookie, off uint64, n uint32) []byte {
			return chunkReply(cookie, replyFlagDone, chunkOffsetData, offsetData(off, make([]byte, n/2)))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			target := scriptedServer(t, 1<<20, tc.reply)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := Dial(ctx, target, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			buf := bytes.Repeat([]byte{0xee}, 8192)
			err = c.ReadAt(ctx, buf, 0)
			if err == nil {
				t.Fatal("read succeeded against a broken server")
			}
			var pe *ProtocolError
			if !errors.As(err, &pe) && !errors.Is(err, ErrClosed) {
				t.Fatalf("err = %v, want a protocol error or a closed connection", err)
			}
			// Later requests fail at once instead of hanging.
			if err := c.ReadAt(ctx, buf, 0); err == nil {
				t.Fatal("read on a failed connection succeeded")
			}
		})
	}
}

// TestCoverageMatchesBitmap checks the coverage tracker against a plain
// bitmap: random pieces in random order are accepted exactly when they do
// not overlap what came before, and the total is the bitmap's count.
func TestCoverageMatchesBitmap(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for round := range 2000 {
		const n = 512
		var c coverage
		filled := make([]bool, n)
		count := 0
		for range 1 + rng.IntN(60) {
			start := uint64(rng.IntN(n))
			end := start + 1 + uint64(rng.IntN(min(n-int(start), 1+rng.IntN(64))))
			overlaps := false
			for i := start; i < end; i++ {
				overlaps = overlaps || filled[i]
			}
			err := c.add(start, end)
			if overlaps != (err != nil) {
				t.Fatalf("round %d: add [%d,%d): err %v, overlap in the model: %v", round, start, end, err, overlaps)
			}
			if err != nil {
				break
			}
			for i := start; i < end; i++ {
				filled[i] = true
			}
			count += int(end - start)
			if c.total != uint64(count) {
				t.Fatalf("round %d: total %d, model %d", round, c.total, count)
			}
			for i, s := range c.spans {
				if s[0] >= s[1] || s[0] <= c.prefix || i > 0 && c.spans[i-1][1] >= s[0] {
					t.Fatalf("round %d: spans not sorted, disjoint and apart: prefix %d %v", round, c.prefix, c.spans)
				}
			}
		}
	}
}

func TestCoverageFragmentsAreBounded(t *testing.T) {
	var c coverage
	var err error
	for i := uint64(0); err == nil && i < 4*maxReadFragments; i++ {
		err = c.add(2*i+1, 2*i+2) // every other byte, never the first
	}
	var pe *ProtocolError
	if !errors.As(err, &pe) || len(c.spans) > maxReadFragments {
		t.Fatalf("err %v with %d fragments; want a protocol error at %d", err, len(c.spans), maxReadFragments)
	}
}
