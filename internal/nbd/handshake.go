package nbd

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"slices"
)

// Handshake bounds. A server is untrusted input: whatever it sends during
// the handshake, the client keeps at most maxOptReply bytes per reply, reads
// at most maxGoReplies GO replies, and stores only the meta contexts it asked
// for (each once), so a hostile server cannot make it grow.
const (
	maxGoReplies = 32
	// maxMetaContexts bounds the meta contexts one client asks for.
	maxMetaContexts = 16
	// maxContextName bounds a meta context name (the spec allows 4096).
	maxContextName = 4096
	// maxExportSize: sizes are int64 everywhere else; 2^63 and above
	// would turn negative.
	maxExportSize = math.MaxInt64
)

// OptionError is the server's refusal of a handshake option (for GO: the
// export does not exist, or the server's policy refuses it). Retrying does
// not help.
type OptionError struct {
	Option  uint32
	Reply   uint32
	Message string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("server refused option %d (reply %#x): %q", e.Option, e.Reply, e.Message)
}

// negotiate runs the fixed-newstyle handshake up to NBD_OPT_GO. It asks for
// structured replies and for the given meta contexts; a context the server
// does not know is simply absent from the result, and a context it offers
// without being asked is a protocol error.
func negotiate(w io.Writer, br *bufio.Reader, export string, metaContexts []string) (exportInfo, error) {
	var info exportInfo
	var names []string
	for _, q := range metaContexts {
		if len(q) == 0 || len(q) > maxContextName {
			return info, fmt.Errorf("meta context name of %d bytes", len(q))
		}
		if !slices.Contains(names, q) {
			names = append(names, q)
		}
	}
	if len(names) > maxMetaContexts {
		return info, fmt.Errorf("%d meta contexts asked for; at most %d", len(names), maxMetaContexts)
	}
	var greet [18]byte
	if _, err := io.ReadFull(br, greet[:]); err != nil {
		return info, fmt.Errorf("read server greeting: %w", err)
	}
	if binary.BigEndian.Uint64(greet[0:8]) != magicNBD {
		return info, protoErr("not an NBD server (bad greeting magic)")
	}
	if binary.BigEndian.Uint64(greet[8:16]) != magicIHaveOpt {
		return info, protoErr("server speaks the oldstyle handshake; only fixed newstyle is supported")
	}
	sflags := binary.BigEndian.Uint16(greet[16:18])
	if sflags&flagFixedNewstyle == 0 {
		return info, protoErr("server does not support the fixed newstyle handshake")
	}
	cflags := uint32(flagFixedNewstyle)
	if sflags&flagNoZeroes != 0 {
		cflags |= flagNoZeroes
	}
	var cf [4]byte
	binary.BigEndian.PutUint32(cf[:], cflags)
	if _, err := w.Write(cf[:]); err != nil {
		return info, fmt.Errorf("send client flags: %w", err)
	}

	// Structured replies: needed for sparse reads and block status.
	if err := sendOpt(w, optStructuredRepl, nil); err != nil {
		return info, err
	}
	typ, _, err := readOptReply(br, optStructuredRepl)
	if err != nil {
		return info, err
	}
	info.structured = typ == repAck
	info.contexts = map[string]uint32{}

	if info.structured && len(names) > 0 {
		if err := setMetaContexts(w, br, export, names, info.contexts); err != nil {
			return info, err
		}
	}

	// NBD_OPT_GO with a request for block size constraints.
	data := appendString32(nil, export)
	data = binary.BigEndian.AppendUint16(data, 1)
	data = binary.BigEndian.AppendUint16(data, infoBlockSize)
	if err := sendOpt(w, optGo, data); err != nil {
		return info, err
	}
	gotExport := false
	for n := 0; ; n++ {
		if n == maxGoReplies {
			return info, protoErr("more than %d replies to GO", maxGoReplies)
		}
		typ, payload, err := readOptReply(br, optGo)
		if err != nil {
			return info, fmt.Errorf("open export %q: %w", export, err)
		}
		if typ == repAck {
			break
		}
		if typ != repInfo || len(payload) < 2 {
			return info, protoErr("bad GO reply type %d (%d bytes)", typ, len(payload))
		}
		switch binary.BigEndian.Uint16(payload[0:2]) {
		case infoExport:
			if len(payload) != 12 {
				return info, protoErr("INFO_EXPORT of %d bytes", len(payload))
			}
			info.size = binary.BigEndian.Uint64(payload[2:10])
			info.flags = binary.BigEndian.Uint16(payload[10:12])
			gotExport = true
		case infoBlockSize:
			if len(payload) != 14 {
				return info, protoErr("INFO_BLOCK_SIZE of %d bytes", len(payload))
			}
			info.minBlock = binary.BigEndian.Uint32(payload[2:6])
			info.prefBlock = binary.BigEndian.Uint32(payload[6:10])
			info.maxBlock = binary.BigEndian.Uint32(payload[10:14])
		}
	}
	if !gotExport {
		return info, protoErr("server finished GO without INFO_EXPORT")
	}
	if info.size > maxExportSize {
		return info, protoErr("export size %d is 2^63 or more; not supported", info.size)
	}
	if info.maxBlock == 0 || info.maxBlock > MaxRequest {
		info.maxBlock = MaxRequest
	}
	if info.minBlock == 0 {
		info.minBlock = 1
	}
	return info, nil
}

// setMetaContexts asks for the requested contexts and records the ones the
// server agrees to. Only requested names are accepted, each once and with an
// id of its own, so what is stored is bounded by the request.
func setMetaContexts(w io.Writer, br *bufio.Reader, export string, names []string, got map[string]uint32) error {
	data := appendString32(nil, export)
	data = binary.BigEndian.AppendUint32(data, uint32(len(names)))
	for _, q := range names {
		data = appendString32(data, q)
	}
	if err := sendOpt(w, optSetMetaContext, data); err != nil {
		return err
	}
	ids := make(map[uint32]bool, len(names))
	for {
		typ, payload, err := readOptReply(br, optSetMetaContext)
		if err != nil {
			return err
		}
		if typ == repAck || typ&repErrBit != 0 {
			return nil
		}
		if typ != repMetaContext || len(payload) < 5 {
			return protoErr("bad SET_META_CONTEXT reply type %d (%d bytes)", typ, len(payload))
		}
		id, name := binary.BigEndian.Uint32(payload[0:4]), payload[4:]
		if !slices.Contains(names, string(name)) {
			return protoErr("server offered meta context %.64q, which was not asked for", name)
		}
		if _, dup := got[string(name)]; dup || ids[id] {
			return protoErr("server offered meta context %q (id %d) twice", name, id)
		}
		got[string(name)] = id
		ids[id] = true
	}
}

func appendString32(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func sendOpt(w io.Writer, opt uint32, data []byte) error {
	buf := make([]byte, 16, 16+len(data))
	binary.BigEndian.PutUint64(buf[0:8], magicIHaveOpt)
	binary.BigEndian.PutUint32(buf[8:12], opt)
	binary.BigEndian.PutUint32(buf[12:16], uint32(len(data)))
	buf = append(buf, data...)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("send option %d: %w", opt, err)
	}
	return nil
}

// readOptReply reads one option reply. An error reply (other than
// NBD_REP_ERR_UNSUP, which callers treat as "not supported") becomes an
// *OptionError carrying the server's message.
func readOptReply(r io.Reader, opt uint32) (uint32, []byte, error) {
	var h [20]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, fmt.Errorf("read option reply: %w", err)
	}
	if binary.BigEndian.Uint64(h[0:8]) != magicOptReply {
		return 0, nil, protoErr("bad option reply magic")
	}
	if got := binary.BigEndian.Uint32(h[8:12]); got != opt {
		return 0, nil, protoErr("reply for option %d, expected %d", got, opt)
	}
	typ := binary.BigEndian.Uint32(h[12:16])
	n := binary.BigEndian.Uint32(h[16:20])
	if n > maxOptReply {
		return 0, nil, protoErr("option reply of %d bytes", n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, fmt.Errorf("read option reply: %w", err)
	}
	const errUnsup = repErrBit | 1
	if typ&repErrBit != 0 && typ != errUnsup {
		return typ, payload, &OptionError{Option: opt, Reply: typ, Message: string(payload[:min(len(payload), maxErrorMessage)])}
	}
	return typ, payload, nil
}
