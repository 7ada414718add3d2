// Package nbdtest is a scripted NBD server for tests that need a server to
// misbehave in ways qemu-nbd and nbdkit cannot be made to (answering a READ
// without data, advertising an absurd size). It speaks the fixed-newstyle
// handshake with structured replies and agrees to base:allocation; every
// request is answered by the test's Reply function.
package nbdtest

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
)

// Protocol constants (doc/proto.md of the NBD project).
const (
	CmdRead        = 0
	CmdWrite       = 1
	CmdDisc        = 2
	CmdFlush       = 3
	CmdBlockStatus = 7

	FlagDone        = 1
	ChunkNone       = 0
	ChunkOffsetData = 1
	ChunkOffsetHole = 2
	ChunkStatus     = 5

	magicNBD       = 0x4e42444d41474943
	magicIHaveOpt  = 0x49484156454f5054
	magicOptReply  = 0x0003e889045565a9
	magicStructure = 0x668e33ef
	optStructured  = 8
	optSetMeta     = 10
	optGo          = 7
	repAck         = 1
	repInfo        = 3
	repMetaContext = 4
	repErrUnsup    = 1<<31 | 1
	allocationID   = 1
)

// Request is one command the client sent.
type Request struct {
	Cmd    uint16
	Cookie uint64
	Offset uint64
	Length uint32
}

// Server is a running scripted server.
type Server struct {
	// Socket is the unix socket it listens on.
	Socket string
	mu     sync.Mutex
	reqs   []Request
}

// URI is the nbd+unix URI of the export.
func (s *Server) URI() string { return fmt.Sprintf("nbd+unix:///disk?socket=%s", s.Socket) }

// Requests returns the requests received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.reqs...)
}

// Start serves an export of size bytes on a socket in dir, for the test's
// lifetime. reply answers each request with raw reply bytes (build them
// with Chunk and friends); BLOCK_STATUS may be left to Reply too. The export
// is writable and advertises FLUSH.
func Start(t testing.TB, dir string, size uint64, reply func(Request) []byte) *Server {
	t.Helper()
	s := &Server{Socket: filepath.Join(dir, "nbdtest.sock")}
	ln, err := net.Listen("unix", s.Socket)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	conns := map[net.Conn]bool{}
	var mu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[nc] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				s.serve(nc, size, reply)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for nc := range conns {
			nc.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return s
}

func (s *Server) serve(nc net.Conn, size uint64, reply func(Request) []byte) {
	br := bufio.NewReader(nc)
	greet := binary.BigEndian.AppendUint64(nil, magicNBD)
	greet = binary.BigEndian.AppendUint64(greet, magicIHaveOpt)
	greet = binary.BigEndian.AppendUint16(greet, 1|2) // fixed newstyle, no zeroes
	if _, err := nc.Write(greet); err != nil {
		return
	}
	if _, err := io.ReadFull(br, make([]byte, 4)); err != nil {
		return
	}
	optReply := func(opt, typ uint32, data []byte) {
		b := binary.BigEndian.AppendUint64(nil, magicOptReply)
		b = binary.BigEndian.AppendUint32(b, opt)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		nc.Write(append(b, data...))
	}
	for done := false; !done; {
		var h [16]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return
		}
		opt := binary.BigEndian.Uint32(h[8:12])
		n := binary.BigEndian.Uint32(h[12:16])
		if n > 64<<10 {
			return
		}
		if _, err := io.CopyN(io.Discard, br, int64(n)); err != nil {
			return
		}
		switch opt {
		case optStructured:
			optReply(opt, repAck, nil)
		case optSetMeta:
			optReply(opt, repMetaContext, append(binary.BigEndian.AppendUint32(nil, allocationID), "base:allocation"...))
			optReply(opt, repAck, nil)
		case optGo:
			info := binary.BigEndian.AppendUint16(nil, 0)
			info = binary.BigEndian.AppendUint64(info, size)
			info = binary.BigEndian.AppendUint16(info, 1|1<<2) // has flags, send flush
			optReply(opt, repInfo, info)
			optReply(opt, repAck, nil)
			done = true
		default:
			optReply(opt, repErrUnsup, nil)
		}
	}
	for {
		var h [28]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return
		}
		r := Request{
			Cmd:    binary.BigEndian.Uint16(h[6:8]),
			Cookie: binary.BigEndian.Uint64(h[8:16]),
			Offset: binary.BigEndian.Uint64(h[16:24]),
			Length: binary.BigEndian.Uint32(h[24:28]),
		}
		if r.Cmd == CmdWrite {
			if _, err := io.CopyN(io.Discard, br, int64(r.Length)); err != nil {
				return
			}
		}
		if r.Cmd == CmdDisc {
			return
		}
		s.mu.Lock()
		s.reqs = append(s.reqs, r)
		s.mu.Unlock()
		if _, err := nc.Write(reply(r)); err != nil {
			return
		}
	}
}

// Chunk is one structured reply chunk.
func Chunk(cookie uint64, flags, typ uint16, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicStructure)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// Done is the NONE chunk with the done flag: "nothing more for this
// request".
func Done(cookie uint64) []byte { return Chunk(cookie, FlagDone, ChunkNone, nil) }

// AllData answers a BLOCK_STATUS for base:allocation with one data extent
// over the whole request.
func AllData(r Request) []byte {
	p := binary.BigEndian.AppendUint32(nil, allocationID)
	p = binary.BigEndian.AppendUint32(p, r.Length)
	p = binary.BigEndian.AppendUint32(p, 0)
	return Chunk(r.Cookie, FlagDone, ChunkStatus, p)
}
