// Package nbd is a client for the Network Block Device protocol
// (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md),
// written with the standard library only.
//
// It speaks the fixed-newstyle handshake with NBD_OPT_GO, structured replies,
// and meta contexts for BLOCK_STATUS (base:allocation and
// qemu:dirty-bitmap:NAME). Requests are pipelined: many may be in flight on
// one connection, and a single reader goroutine matches replies to requests by
// cookie. A reply that does not fit the request it names (a short read, an
// oversized chunk, an offset outside the request) is a protocol error: the
// connection is closed and every pending request fails, so bad data is never
// handed to a caller.
package nbd

import "fmt"

const (
	magicNBD       = 0x4e42444d41474943 // "NBDMAGIC"
	magicIHaveOpt  = 0x49484156454f5054 // "IHAVEOPT"
	magicOptReply  = 0x0003e889045565a9
	magicRequest   = 0x25609513
	magicSimple    = 0x67446698
	magicStructure = 0x668e33ef

	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	optGo             = 7
	optStructuredRepl = 8
	optSetMetaContext = 10
	optAbort          = 2

	repAck         = 1
	repInfo        = 3
	repMetaContext = 4
	repErrBit      = 1 << 31

	infoExport    = 0
	infoBlockSize = 3

	// Transmission flags.
	tflagHasFlags    = 1 << 0
	tflagReadOnly    = 1 << 1
	tflagSendFlush   = 1 << 2
	tflagSendTrim    = 1 << 5
	tflagWriteZeroes = 1 << 6
	tflagMultiConn   = 1 << 8
	tflagFastZero    = 1 << 11

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	cmdFlagNoHole   = 1 << 1
	cmdFlagFastZero = 1 << 4

	replyFlagDone = 1 << 0

	chunkNone        = 0
	chunkOffsetData  = 1
	chunkOffsetHole  = 2
	chunkBlockStatus = 5
	chunkErrorBit    = 1 << 15
	chunkError       = chunkErrorBit + 1
	chunkErrorOffset = chunkErrorBit + 2

	// StateHole and StateZero are the base:allocation flags.
	StateHole = 1 << 0
	StateZero = 1 << 1
	// StateDirty is the qemu:dirty-bitmap flag for a changed extent.
	StateDirty = 1 << 0

	// MaxRequest bounds the payload of one request. Servers advertise their
	// own maximum (qemu-nbd 32 MiB); we never ask for more than this.
	MaxRequest = 32 << 20
	// maxOptReply bounds a handshake reply so a hostile server cannot make
	// us allocate without limit.
	maxOptReply = 64 << 10
	// maxStatusPayload bounds a BLOCK_STATUS chunk.
	maxStatusPayload = 8 << 20
	// maxErrorMessage bounds the message in an error chunk (the spec says 4096).
	maxErrorMessage = 4096
)

// Error is an error the server returned for one request, with its NBD errno.
type Error struct {
	Errno   uint32
	Message string
}

func (e *Error) Error() string {
	name := errnoNames[e.Errno]
	if name == "" {
		name = fmt.Sprintf("errno %d", e.Errno)
	}
	if e.Message != "" {
		return fmt.Sprintf("nbd server error %s: %s", name, e.Message)
	}
	return "nbd server error " + name
}

// Errno values from the protocol.
const (
	EPERM     = 1
	EIO       = 5
	ENOMEM    = 12
	EINVAL    = 22
	ENOSPC    = 28
	EOVERFLOW = 75
	ENOTSUP   = 95
	ESHUTDOWN = 108
)

var errnoNames = map[uint32]string{
	EPERM: "EPERM", EIO: "EIO", ENOMEM: "ENOMEM", EINVAL: "EINVAL", ENOSPC: "ENOSPC",
	EOVERFLOW: "EOVERFLOW", ENOTSUP: "ENOTSUP", ESHUTDOWN: "ESHUTDOWN",
}

// ProtocolError says the server broke the protocol; the connection is dead.
type ProtocolError struct{ Reason string }

func (e *ProtocolError) Error() string { return "nbd protocol error: " + e.Reason }

func protoErr(format string, args ...any) error {
	return &ProtocolError{Reason: fmt.Sprintf(format, args...)}
}
