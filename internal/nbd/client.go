package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Meta context names.
const (
	ContextAllocation  = "base:allocation"
	dirtyBitmapContext = "qemu:dirty-bitmap:"
)

// DirtyBitmapContext names the meta context of a qemu dirty bitmap.
func DirtyBitmapContext(bitmap string) string { return dirtyBitmapContext + bitmap }

// Options tunes a client.
type Options struct {
	// Connections is how many connections to open when the server
	// advertises multi-conn (default 4). Without multi-conn one is used,
	// since then the server does not promise consistency across them.
	Connections int
	// InFlight bounds the requests in flight per connection (default 32).
	InFlight int
	// MetaContexts are asked for during the handshake.
	MetaContexts []string
	// Timeout fails a connection whose server has not answered a request
	// for this long (default 60s; negative waits for ever).
	Timeout time.Duration
	// Dial, when set, opens every connection instead of a plain dial of
	// the target's address: the caller decides where connections may go
	// (internal/volume confines them to allowed sockets and hosts).
	Dial func(ctx context.Context) (net.Conn, error)
}

// ErrUnreachable wraps failures to reach the server or to finish the
// handshake for reasons that may pass: connection refused, a missing socket,
// a reset or timeout during the handshake. A refused option (no such export)
// and a protocol error are not unreachable: retrying does not help.
var ErrUnreachable = errors.New("nbd server unreachable")

// Client is an open export, possibly over several connections.
type Client struct {
	conns []*conn
	next  atomic.Uint64
	info  exportInfo
}

// Target is a parsed NBD URI.
type Target struct {
	Network string // "tcp" or "unix"
	Address string
	Export  string
}

// ParseURI parses nbd://host[:port]/export and nbd+unix:///export?socket=PATH.
func ParseURI(s string) (Target, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Target{}, fmt.Errorf("nbd uri %q: %w", s, err)
	}
	export := strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "nbd":
		if u.Host == "" {
			return Target{}, fmt.Errorf("nbd uri %q: no host", s)
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "10809")
		}
		return Target{Network: "tcp", Address: host, Export: export}, nil
	case "nbd+unix":
		sock := u.Query().Get("socket")
		if sock == "" || u.Host != "" {
			return Target{}, fmt.Errorf("nbd uri %q: want nbd+unix:///EXPORT?socket=PATH", s)
		}
		return Target{Network: "unix", Address: sock, Export: export}, nil
	default:
		return Target{}, fmt.Errorf("nbd uri %q: scheme must be nbd or nbd+unix", s)
	}
}

// Dial opens an export. The handshake is bounded by ctx.
func Dial(ctx context.Context, t Target, opts Options) (*Client, error) {
	if opts.Connections <= 0 {
		opts.Connections = 4
	}
	if opts.InFlight <= 0 {
		opts.InFlight = 32
	}
	if opts.Timeout == 0 {
		opts.Timeout = 60 * time.Second
	}
	if opts.Timeout < 0 {
		opts.Timeout = 0
	}
	if len(opts.MetaContexts) > maxMetaContexts {
		return nil, fmt.Errorf("nbd: %d meta contexts asked for; at most %d", len(opts.MetaContexts), maxMetaContexts)
	}
	for _, q := range opts.MetaContexts {
		if len(q) == 0 || len(q) > maxContextName {
			return nil, fmt.Errorf("nbd: meta context name of %d bytes (1-%d)", len(q), maxContextName)
		}
	}
	first, err := dialOne(ctx, t, opts)
	if err != nil {
		return nil, err
	}
	c := &Client{conns: []*conn{first}, info: first.export}
	if c.info.flags&tflagMultiConn != 0 {
		for len(c.conns) < opts.Connections {
			extra, err := dialOne(ctx, t, opts)
			if err != nil {
				c.Close()
				return nil, err
			}
			c.conns = append(c.conns, extra)
		}
	}
	return c, nil
}

func dialOne(ctx context.Context, t Target, opts Options) (*conn, error) {
	var nc net.Conn
	var err error
	if opts.Dial != nil {
		nc, err = opts.Dial(ctx)
	} else {
		var d net.Dialer
		nc, err = d.DialContext(ctx, t.Network, t.Address)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: connect to %s: %w", ErrUnreachable, t.Address, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(30 * time.Second)
	}
	_ = nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	br := bufio.NewReaderSize(nc, 256<<10)
	info, err := negotiate(nc, br, t.Export, opts.MetaContexts)
	stopped := stop()
	if err == nil && !stopped {
		err = ctx.Err()
	}
	if err != nil {
		nc.Close()
		var pe *ProtocolError
		var oe *OptionError
		if !errors.As(err, &pe) && !errors.As(err, &oe) {
			// Cut off mid-handshake (reset, EOF, deadline): the server
			// may be restarting or at its connection limit.
			err = fmt.Errorf("%w: %w", ErrUnreachable, err)
		}
		return nil, fmt.Errorf("nbd handshake with %s: %w", t.Address, err)
	}
	_ = nc.SetDeadline(time.Time{})
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return newConn(nc, info, opts.InFlight, opts.Timeout, br), nil
}

// Size is the export size in bytes.
func (c *Client) Size() int64 { return int64(c.info.size) }

// MaxRequest is the largest READ or WRITE payload the server accepts.
func (c *Client) MaxRequest() int { return int(c.info.maxBlock) }

// ReadOnly says whether the server refuses writes.
func (c *Client) ReadOnly() bool { return c.info.flags&tflagReadOnly != 0 }

// Connections is the number of open connections.
func (c *Client) Connections() int { return len(c.conns) }

// HasContext says whether the server agreed to a meta context.
func (c *Client) HasContext(name string) bool { _, ok := c.info.contexts[name]; return ok }

func (c *Client) pick() *conn {
	if len(c.conns) == 1 {
		return c.conns[0]
	}
	return c.conns[c.next.Add(1)%uint64(len(c.conns))]
}

func (c *Client) checkRange(off int64, n int) error {
	if off < 0 || n < 0 || uint64(off)+uint64(n) > c.info.size {
		return fmt.Errorf("nbd request [%d,+%d) outside export of %d bytes", off, n, c.info.size)
	}
	return nil
}

// ReadAt fills p from offset off. Holes read as zeros.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := c.checkRange(off, len(p)); err != nil {
		return err
	}
	for len(p) > 0 {
		n := min(len(p), int(c.info.maxBlock))
		req := &request{cmd: cmdRead, offset: uint64(off), length: uint32(n), buf: p[:n]}
		if err := c.pick().do(ctx, req, 0, nil); err != nil {
			return fmt.Errorf("nbd read at %d: %w", off, err)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// WriteAt writes p at offset off.
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64) error {
	if c.ReadOnly() {
		return errors.New("nbd export is read-only")
	}
	if err := c.checkRange(off, len(p)); err != nil {
		return err
	}
	for len(p) > 0 {
		n := min(len(p), int(c.info.maxBlock))
		req := &request{cmd: cmdWrite, offset: uint64(off), length: uint32(n)}
		if err := c.pick().do(ctx, req, 0, p[:n]); err != nil {
			return fmt.Errorf("nbd write at %d: %w", off, err)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// ErrNotFast is returned by WriteZeroes with fast set when the server could
// only zero by writing.
var ErrNotFast = errors.New("nbd server cannot zero this range fast")

// WriteZeroes makes [off, off+n) read as zeros, letting the server punch
// holes. With fast, the server must refuse (ErrNotFast) rather than fall back
// to writing zeros, so the caller can choose a cheaper way.
func (c *Client) WriteZeroes(ctx context.Context, off, n int64, fast bool) error {
	if c.info.flags&tflagWriteZeroes == 0 {
		return fmt.Errorf("nbd server does not support WRITE_ZEROES: %w", ErrNotFast)
	}
	var flags uint16
	if fast {
		if c.info.flags&tflagFastZero == 0 {
			return ErrNotFast
		}
		flags |= cmdFlagFastZero
	}
	return c.rangeCmd(ctx, cmdWriteZeroes, flags, off, n)
}

// Trim tells the server the range is no longer needed.
func (c *Client) Trim(ctx context.Context, off, n int64) error {
	if c.info.flags&tflagSendTrim == 0 {
		return errors.New("nbd server does not support TRIM")
	}
	return c.rangeCmd(ctx, cmdTrim, 0, off, n)
}

func (c *Client) rangeCmd(ctx context.Context, cmd, flags uint16, off, n int64) error {
	if err := c.checkRange(off, 0); err != nil {
		return err
	}
	if n < 0 || uint64(off)+uint64(n) > c.info.size {
		return fmt.Errorf("nbd request [%d,+%d) outside export of %d bytes", off, n, c.info.size)
	}
	const step = 1 << 30
	for n > 0 {
		m := min(n, step)
		req := &request{cmd: cmd, offset: uint64(off), length: uint32(m)}
		if err := c.pick().do(ctx, req, flags, nil); err != nil {
			var se *Error
			if errors.As(err, &se) && se.Errno == ENOTSUP && flags&cmdFlagFastZero != 0 {
				return ErrNotFast
			}
			return fmt.Errorf("nbd command %d at %d: %w", cmd, off, err)
		}
		off, n = off+m, n-m
	}
	return nil
}

// Flush asks the server to persist every completed write. With multi-conn
// the server promises this covers writes made on every connection.
func (c *Client) Flush(ctx context.Context) error {
	if c.info.flags&tflagSendFlush == 0 {
		return nil
	}
	if err := c.conns[0].do(ctx, &request{cmd: cmdFlush}, 0, nil); err != nil {
		return fmt.Errorf("nbd flush: %w", err)
	}
	return nil
}

// BlockStatus asks for the extents of meta context name from off. The answer
// starts at off and may cover less than n bytes (never more: it is clamped).
func (c *Client) BlockStatus(ctx context.Context, name string, off, n int64) ([]Extent, error) {
	id, ok := c.info.contexts[name]
	if !ok {
		return nil, fmt.Errorf("nbd server did not agree to meta context %q", name)
	}
	if err := c.checkRange(off, 0); err != nil {
		return nil, err
	}
	n = min(n, int64(c.info.size)-off, 1<<31)
	if n <= 0 {
		return nil, nil
	}
	// The server answers for every negotiated context, not only the one
	// we want, so every one must be expected.
	status := make(map[uint32][]Extent, len(c.info.contexts))
	for _, cid := range c.info.contexts {
		status[cid] = nil
	}
	req := &request{cmd: cmdBlockStatus, offset: uint64(off), length: uint32(n), status: status}
	if err := c.pick().do(ctx, req, 0, nil); err != nil {
		return nil, fmt.Errorf("nbd block status at %d: %w", off, err)
	}
	ext := req.status[id]
	if len(ext) == 0 {
		return nil, protoErr("BLOCK_STATUS reply without extents for %q", name)
	}
	end := uint64(off + n)
	out := ext[:0]
	for _, e := range ext {
		if e.Offset >= end {
			break
		}
		if e.Offset+e.Length > end {
			e.Length = end - e.Offset
		}
		out = append(out, e)
	}
	return out, nil
}

// Close disconnects every connection.
func (c *Client) Close() error {
	for _, cn := range c.conns {
		cn.close()
	}
	return nil
}
