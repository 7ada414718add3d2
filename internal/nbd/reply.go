package nbd

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"io"
	"slices"
)

// Extent is one run of a BLOCK_STATUS answer: Length bytes from Offset share
// the same Flags (StateHole|StateZero for base:allocation, StateDirty for a
// dirty bitmap).
type Extent struct {
	Offset uint64
	Length uint64
	Flags  uint32
}

// request is one command in flight. The reader goroutine fills it and
// closes done; nothing else touches it after it is registered.
type request struct {
	cmd    uint16
	offset uint64
	length uint32
	buf    []byte   // READ destination, len == length
	cov    coverage // which bytes of buf the reply's chunks have filled

	// BLOCK_STATUS results per meta context id.
	status map[uint32][]Extent

	err  error
	done chan struct{}
}

// replyReader parses replies from the server and applies them to pending
// requests. It is separate from the connection so that the parser can be
// fuzzed on its own.
type replyReader struct {
	r          *bufio.Reader
	structured bool
	lookup     func(cookie uint64) *request
	hdr        [20]byte
}

// next reads one reply (a simple reply or one structured chunk). It returns
// the request the reply belongs to and whether that request is complete.
// Any error is fatal for the connection.
func (rr *replyReader) next() (cookie uint64, req *request, final bool, err error) {
	if _, err := io.ReadFull(rr.r, rr.hdr[:4]); err != nil {
		return 0, nil, false, err
	}
	switch magic := binary.BigEndian.Uint32(rr.hdr[:4]); magic {
	case magicSimple:
		return rr.simple()
	case magicStructure:
		if !rr.structured {
			return 0, nil, false, protoErr("structured reply without negotiation")
		}
		return rr.chunk()
	default:
		return 0, nil, false, protoErr("bad reply magic %#x", magic)
	}
}

func (rr *replyReader) simple() (uint64, *request, bool, error) {
	h := rr.hdr[4:16]
	if _, err := io.ReadFull(rr.r, h); err != nil {
		return 0, nil, false, shortReply(err)
	}
	errno := binary.BigEndian.Uint32(h[0:4])
	cookie := binary.BigEndian.Uint64(h[4:12])
	req := rr.lookup(cookie)
	if req == nil {
		return cookie, nil, false, protoErr("simple reply for unknown cookie %d", cookie)
	}
	if errno != 0 {
		req.err = &Error{Errno: errno}
		return cookie, req, true, nil
	}
	if req.cmd == cmdRead {
		if rr.structured {
			// The spec forbids a successful simple reply to READ once
			// structured replies are negotiated.
			return cookie, req, false, protoErr("simple reply with data after structured replies were negotiated")
		}
		if _, err := io.ReadFull(rr.r, req.buf); err != nil {
			return cookie, req, false, shortReply(err)
		}
	}
	return cookie, req, true, nil
}

func (rr *replyReader) chunk() (uint64, *request, bool, error) {
	h := rr.hdr[4:20]
	if _, err := io.ReadFull(rr.r, h); err != nil {
		return 0, nil, false, shortReply(err)
	}
	flags := binary.BigEndian.Uint16(h[0:2])
	typ := binary.BigEndian.Uint16(h[2:4])
	cookie := binary.BigEndian.Uint64(h[4:12])
	length := binary.BigEndian.Uint32(h[12:16])
	final := flags&replyFlagDone != 0
	req := rr.lookup(cookie)
	if req == nil {
		return cookie, nil, false, protoErr("structured reply for unknown cookie %d", cookie)
	}
	switch typ {
	case chunkNone:
		if length != 0 {
			return cookie, req, false, protoErr("NONE chunk with %d bytes of payload", length)
		}
		if !final {
			return cookie, req, false, protoErr("NONE chunk without the done flag")
		}
	case chunkOffsetData:
		if req.cmd != cmdRead {
			return cookie, req, false, protoErr("OFFSET_DATA chunk for command %d", req.cmd)
		}
		if length < 9 {
			return cookie, req, false, protoErr("OFFSET_DATA chunk of %d bytes", length)
		}
		var ob [8]byte
		if _, err := io.ReadFull(rr.r, ob[:]); err != nil {
			return cookie, req, false, shortReply(err)
		}
		dst, err := req.fill(binary.BigEndian.Uint64(ob[:]), uint64(length-8))
		if err != nil {
			return cookie, req, false, err
		}
		if _, err := io.ReadFull(rr.r, dst); err != nil {
			return cookie, req, false, shortReply(err)
		}
	case chunkOffsetHole:
		if req.cmd != cmdRead {
			return cookie, req, false, protoErr("OFFSET_HOLE chunk for command %d", req.cmd)
		}
		if length != 12 {
			return cookie, req, false, protoErr("OFFSET_HOLE chunk of %d bytes", length)
		}
		var b [12]byte
		if _, err := io.ReadFull(rr.r, b[:]); err != nil {
			return cookie, req, false, shortReply(err)
		}
		size := binary.BigEndian.Uint32(b[8:12])
		if size == 0 {
			return cookie, req, false, protoErr("OFFSET_HOLE of zero length")
		}
		dst, err := req.fill(binary.BigEndian.Uint64(b[0:8]), uint64(size))
		if err != nil {
			return cookie, req, false, err
		}
		clear(dst)
	case chunkBlockStatus:
		if req.cmd != cmdBlockStatus {
			return cookie, req, false, protoErr("BLOCK_STATUS chunk for command %d", req.cmd)
		}
		if length < 12 || (length-4)%8 != 0 || length > maxStatusPayload {
			return cookie, req, false, protoErr("BLOCK_STATUS chunk of %d bytes", length)
		}
		if err := rr.blockStatus(req, length); err != nil {
			return cookie, req, false, err
		}
	case chunkError, chunkErrorOffset:
		if err := rr.errorChunk(req, typ, length); err != nil {
			return cookie, req, false, err
		}
	default:
		if typ&chunkErrorBit != 0 {
			// An unknown error type: the spec says treat it as an error
			// with the errno it carries.
			if err := rr.errorChunk(req, chunkError, length); err != nil {
				return cookie, req, false, err
			}
			break
		}
		return cookie, req, false, protoErr("unknown chunk type %d", typ)
	}
	// A successful READ must have had every byte of its buffer filled by
	// exactly one chunk; anything less would hand stale buffer contents
	// to the caller as data.
	if final && req.cmd == cmdRead && req.err == nil && req.cov.total != uint64(req.length) {
		return cookie, req, false, protoErr("READ reply [%d,+%d) ended with %d of its bytes covered", req.offset, req.length, req.cov.total)
	}
	return cookie, req, final, nil
}

// fill returns the part of req.buf that a chunk at offset off of n bytes
// covers, refusing anything outside the request or overlapping a part an
// earlier chunk filled.
func (req *request) fill(off, n uint64) ([]byte, error) {
	if off < req.offset || n > uint64(req.length) || off-req.offset > uint64(req.length)-n {
		return nil, protoErr("chunk [%d,+%d) outside request [%d,+%d)", off, n, req.offset, req.length)
	}
	start := off - req.offset
	if err := req.cov.add(start, start+n); err != nil {
		return nil, err
	}
	return req.buf[start : start+n], nil
}

// maxReadFragments bounds the disjoint pieces a READ reply may arrive in
// out of order. Servers send chunks in offset order, which needs none.
const maxReadFragments = 1024

// coverage records the byte ranges of a READ that chunks have filled, so
// that overlaps and gaps are protocol errors. Chunks in offset order, the
// usual case, only move prefix on; chunks out of order are kept as sorted
// disjoint ranges past it, merged when they touch.
type coverage struct {
	prefix uint64      // [0, prefix) is filled
	spans  [][2]uint64 // filled ranges beyond prefix, sorted, disjoint, not touching
	total  uint64
}

// add marks [start, end) filled (start < end; relative to the request).
func (c *coverage) add(start, end uint64) error {
	overlap := func() error { return protoErr("READ chunk [%d,%d) overlaps a part already filled", start, end) }
	if start < c.prefix {
		return overlap()
	}
	if start == c.prefix {
		if len(c.spans) > 0 && c.spans[0][0] < end {
			return overlap()
		}
		c.prefix = end
		if len(c.spans) > 0 && c.spans[0][0] == end {
			c.prefix = c.spans[0][1]
			c.spans = c.spans[1:]
		}
		c.total += end - start
		return nil
	}
	i, _ := slices.BinarySearchFunc(c.spans, start, func(s [2]uint64, t uint64) int { return cmp.Compare(s[0], t) })
	if i > 0 && c.spans[i-1][1] > start || i < len(c.spans) && c.spans[i][0] < end {
		return overlap()
	}
	joinLeft := i > 0 && c.spans[i-1][1] == start
	joinRight := i < len(c.spans) && c.spans[i][0] == end
	switch {
	case joinLeft && joinRight:
		c.spans[i-1][1] = c.spans[i][1]
		c.spans = slices.Delete(c.spans, i, i+1)
	case joinLeft:
		c.spans[i-1][1] = end
	case joinRight:
		c.spans[i][0] = start
	default:
		if len(c.spans) == maxReadFragments {
			return protoErr("READ reply in more than %d disjoint pieces", maxReadFragments)
		}
		c.spans = slices.Insert(c.spans, i, [2]uint64{start, end})
	}
	c.total += end - start
	return nil
}

func (rr *replyReader) blockStatus(req *request, length uint32) error {
	payload := make([]byte, length)
	if _, err := io.ReadFull(rr.r, payload); err != nil {
		return shortReply(err)
	}
	id := binary.BigEndian.Uint32(payload[0:4])
	if _, ok := req.status[id]; !ok {
		return protoErr("BLOCK_STATUS for meta context %d that was not asked for", id)
	}
	if len(req.status[id]) != 0 {
		return protoErr("second BLOCK_STATUS chunk for meta context %d", id)
	}
	off := req.offset
	var out []Extent
	for p := payload[4:]; len(p) >= 8; p = p[8:] {
		n := uint64(binary.BigEndian.Uint32(p[0:4]))
		if n == 0 {
			return protoErr("BLOCK_STATUS extent of zero length")
		}
		out = append(out, Extent{Offset: off, Length: n, Flags: binary.BigEndian.Uint32(p[4:8])})
		off += n
	}
	req.status[id] = out
	return nil
}

func (rr *replyReader) errorChunk(req *request, typ uint16, length uint32) error {
	if length < 6 || length > 6+maxErrorMessage+8 {
		return protoErr("error chunk of %d bytes", length)
	}
	payload := make([]byte, length)
	if _, err := io.ReadFull(rr.r, payload); err != nil {
		return shortReply(err)
	}
	errno := binary.BigEndian.Uint32(payload[0:4])
	msgLen := uint32(binary.BigEndian.Uint16(payload[4:6]))
	want := 6 + msgLen
	if typ == chunkErrorOffset {
		want += 8
	}
	if want != length {
		return protoErr("error chunk of %d bytes with a %d-byte message", length, msgLen)
	}
	if errno == 0 {
		return protoErr("error chunk with errno 0")
	}
	if req.err == nil {
		req.err = &Error{Errno: errno, Message: string(payload[6 : 6+msgLen])}
	}
	return nil
}

func shortReply(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return &ProtocolError{Reason: "short reply: " + err.Error()}
}
