package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Handshake transcripts: what a server sends, for the tests and the fuzz
// corpus.

func greeting() []byte {
	b := binary.BigEndian.AppendUint64(nil, magicNBD)
	b = binary.BigEndian.AppendUint64(b, magicIHaveOpt)
	return binary.BigEndian.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
}

func optReply(opt, typ uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func metaContextReply(id uint32, name string) []byte {
	return optReply(optSetMetaContext, repMetaContext, append(binary.BigEndian.AppendUint32(nil, id), name...))
}

func infoExportReply(size uint64, flags uint16) []byte {
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, size)
	return optReply(optGo, repInfo, binary.BigEndian.AppendUint16(info, flags))
}

// transcript is a well-behaved server's side of a whole handshake that asked
// for base:allocation.
func transcript(size uint64) []byte {
	var b []byte
	b = append(b, greeting()...)
	b = append(b, optReply(optStructuredRepl, repAck, nil)...)
	b = append(b, metaContextReply(1, ContextAllocation)...)
	b = append(b, optReply(optSetMetaContext, repAck, nil)...)
	b = append(b, infoExportReply(size, tflagHasFlags|tflagSendFlush)...)
	bs := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	bs = binary.BigEndian.AppendUint32(bs, 512)
	bs = binary.BigEndian.AppendUint32(bs, 4096)
	bs = binary.BigEndian.AppendUint32(bs, 1<<20)
	b = append(b, optReply(optGo, repInfo, bs)...)
	return append(b, optReply(optGo, repAck, nil)...)
}

// negotiateBytes runs the client's handshake against a recorded server side.
func negotiateBytes(in []byte, contexts []string) (exportInfo, error) {
	return negotiate(io.Discard, bufio.NewReader(bytes.NewReader(in)), "disk", contexts)
}

// handshakeServer accepts one connection on a unix socket and hands it to
// serve, which plays a server. It returns the target to dial.
func handshakeServer(t *testing.T, serve func(nc net.Conn, br *bufio.Reader)) Target {
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
		serve(nc, bufio.NewReader(nc))
	}()
	return Target{Network: "unix", Address: ln.Addr().String(), Export: "disk"}
}

// readOpt reads one client option (header and data).
func readOpt(br *bufio.Reader) (uint32, error) {
	var h [16]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, err
	}
	_, err := io.CopyN(io.Discard, br, int64(binary.BigEndian.Uint32(h[12:16])))
	return binary.BigEndian.Uint32(h[8:12]), err
}

// TestUnrequestedMetaContextFlood plays a server that answers
// SET_META_CONTEXT with endless replies for contexts nobody asked for (about
// 1 GiB of them, unless the client hangs up). The client must give up at the
// first one, with an error that says why, having allocated little: the old
// client stored every reply and grew without bound.
func TestUnrequestedMetaContextFlood(t *testing.T) {
	const replies, nameLen = 16 << 10, 64<<10 - 8
	sent := make(chan int, 1)
	target := handshakeServer(t, func(nc net.Conn, br *bufio.Reader) {
		n := 0
		defer func() { sent <- n }()
		nc.Write(greeting())
		if _, err := io.ReadFull(br, make([]byte, 4)); err != nil {
			return
		}
		for {
			opt, err := readOpt(br)
			if err != nil {
				return
			}
			switch opt {
			case optStructuredRepl:
				nc.Write(optReply(opt, repAck, nil))
			case optSetMetaContext:
				// One buffer, a new name each time: the server itself
				// allocates nothing per reply.
				msg := metaContextReply(0, strings.Repeat("x", nameLen))
				for ; n < replies; n++ {
					binary.BigEndian.PutUint32(msg[20:24], uint32(n))
					binary.BigEndian.PutUint64(msg[24:32], uint64(n))
					if _, err := nc.Write(msg); err != nil {
						return
					}
				}
				nc.Write(optReply(opt, repAck, nil))
			default:
				return
			}
		}
	})
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Dial(ctx, target, Options{MetaContexts: []string{ContextAllocation}})
	runtime.ReadMemStats(&after)
	if err == nil {
		c.Close()
		t.Fatal("handshake with a flood of unrequested meta contexts succeeded")
	}
	var pe *ProtocolError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "not asked for") {
		t.Fatalf("err = %v, want a protocol error about a context not asked for", err)
	}
	if errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v: a protocol error must not look retryable", err)
	}
	// Generous: the flood is about 1 GiB; the old client kept all of it.
	const bound = 32 << 20
	grew := after.TotalAlloc - before.TotalAlloc
	if grew > bound {
		t.Fatalf("the handshake allocated %d MiB; bound %d MiB", grew>>20, bound>>20)
	}
	t.Logf("refused after allocating %d KiB: %v", grew>>10, err)
	if peak := after.HeapInuse; peak > before.HeapInuse+bound {
		t.Fatalf("heap in use grew from %d to %d MiB", before.HeapInuse>>20, peak>>20)
	}
	cancel()
	if n := <-sent; n >= replies {
		t.Fatalf("the client read all %d replies instead of hanging up", n)
	}
}

func TestHandshakeRefusesBadServers(t *testing.T) {
	ok := transcript(1 << 20)
	// Cut the transcript after the structured-reply ack, to splice in
	// other SET_META_CONTEXT and GO replies.
	head := append(greeting(), optReply(optStructuredRepl, repAck, nil)...)
	goTail := append(infoExportReply(1<<20, tflagHasFlags), optReply(optGo, repAck, nil)...)
	metaAck := optReply(optSetMetaContext, repAck, nil)
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	manyInfos := head
	manyInfos = append(manyInfos, metaAck...)
	for range maxGoReplies + 1 {
		manyInfos = append(manyInfos, infoExportReply(1<<20, tflagHasFlags)...)
	}
	cases := []struct {
		name string
		in   []byte
		want string
	}{
		{"unrequested context", join(head, metaContextReply(1, "qemu:dirty-bitmap:evil"), metaAck, goTail), "not asked for"},
		{"context twice", join(head, metaContextReply(1, ContextAllocation), metaContextReply(2, ContextAllocation), metaAck, goTail), "twice"},
		{"two contexts one id", join(head, metaContextReply(1, ContextAllocation), metaContextReply(1, "qemu:dirty-bitmap:b"), metaAck, goTail), "twice"},
		{"size 2^63", join(head, metaContextReply(1, ContextAllocation), metaAck, infoExportReply(1<<63, tflagHasFlags), optReply(optGo, repAck, nil)), "2^63"},
		{"size 2^64-1", join(head, metaAck, infoExportReply(1<<64-1, tflagHasFlags), optReply(optGo, repAck, nil)), "2^63"},
		{"endless GO infos", manyInfos, "replies to GO"},
		{"oversized option reply", join(head, optReply(optSetMetaContext, repMetaContext, make([]byte, maxOptReply+1))), "option reply of"},
	}
	if _, err := negotiateBytes(ok, []string{ContextAllocation, "qemu:dirty-bitmap:b"}); err != nil {
		t.Fatalf("good transcript: %v", err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := negotiateBytes(tc.in, []string{ContextAllocation, "qemu:dirty-bitmap:b"})
			var pe *ProtocolError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want a protocol error saying %q", err, tc.want)
			}
		})
	}
}

// TestExportOf2To63IsRefused: over a real socket, an export of 2^63 bytes
// (negative as an int64) is refused by Dial, not opened as size 0.
func TestExportOf2To63IsRefused(t *testing.T) {
	target := scriptedServer(t, 1<<63, func(uint16, uint64, uint64, uint32) []byte { return nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, target, Options{})
	if err == nil {
		defer c.Close()
		t.Fatalf("export of 2^63 bytes opened, size %d", c.Size())
	}
	if !strings.Contains(err.Error(), "2^63") || errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v, want a permanent refusal naming 2^63", err)
	}
}

func FuzzHandshake(f *testing.F) {
	f.Add(transcript(1<<20), true)
	f.Add(transcript(1<<63), false)
	f.Add(append(append(greeting(), optReply(optStructuredRepl, repAck, nil)...), metaContextReply(9, "qemu:dirty-bitmap:x")...), true)
	f.Add(append(greeting(), optReply(optStructuredRepl, repErrBit|1, nil)...), false)
	f.Fuzz(func(t *testing.T, in []byte, bitmap bool) {
		asked := []string{ContextAllocation}
		if bitmap {
			asked = append(asked, DirtyBitmapContext("b"))
		}
		info, err := negotiateBytes(in, asked)
		if err != nil {
			return
		}
		// What a successful handshake stores is bounded by what was
		// asked for, and the size fits an int64.
		if info.size > maxExportSize {
			t.Fatalf("size %d accepted", info.size)
		}
		if len(info.contexts) > len(asked) {
			t.Fatalf("%d contexts stored, %d asked for", len(info.contexts), len(asked))
		}
		ids := map[uint32]bool{}
		for name, id := range info.contexts {
			if name != asked[0] && (len(asked) < 2 || name != asked[1]) {
				t.Fatalf("context %q stored without being asked for", name)
			}
			if ids[id] {
				t.Fatalf("id %d stored twice", id)
			}
			ids[id] = true
		}
		if info.maxBlock < 1 || info.maxBlock > MaxRequest || info.minBlock < 1 {
			t.Fatalf("block sizes min %d max %d", info.minBlock, info.maxBlock)
		}
	})
}
