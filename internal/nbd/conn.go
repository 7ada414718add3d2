package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// ErrClosed is returned for requests on a connection that has been closed or
// has failed.
var ErrClosed = errors.New("nbd connection closed")

// ErrTimeout is returned when the server did not answer a request within
// Options.Timeout; the connection is closed.
var ErrTimeout = errors.New("nbd request timed out")

// conn is one negotiated NBD connection in transmission phase.
type conn struct {
	nc      net.Conn
	timeout time.Duration // per request; 0 waits for ever
	export  exportInfo
	slots   chan struct{} // bounds requests in flight
	wmu     sync.Mutex    // serialises request writes
	mu      sync.Mutex
	pending map[uint64]*request
	cookie  uint64
	failed  error
	done    chan struct{} // closed when the reader has ended
}

type exportInfo struct {
	size       uint64
	flags      uint16
	minBlock   uint32
	prefBlock  uint32
	maxBlock   uint32
	structured bool
	contexts   map[string]uint32
}

func newConn(nc net.Conn, info exportInfo, inFlight int, timeout time.Duration, br *bufio.Reader) *conn {
	c := &conn{
		nc:      nc,
		timeout: timeout,
		export:  info,
		slots:   make(chan struct{}, inFlight),
		pending: make(map[uint64]*request),
		done:    make(chan struct{}),
	}
	go c.readLoop(br)
	return c
}

// readLoop is the only reader of the socket. It ends when the connection
// fails or is closed, and fails every request still pending.
func (c *conn) readLoop(br *bufio.Reader) {
	defer close(c.done)
	rr := &replyReader{r: br, structured: c.export.structured, lookup: c.lookup}
	for {
		cookie, req, final, err := rr.next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				err = fmt.Errorf("%w: %w", ErrClosed, err)
			}
			c.abort(err)
			c.failPending()
			return
		}
		if final {
			c.mu.Lock()
			delete(c.pending, cookie)
			c.mu.Unlock()
			close(req.done)
			<-c.slots
		}
	}
}

// failPending completes every pending request with the connection's error.
// Only the reader calls it, so no request is completed twice and no buffer is
// written after its request completed.
func (c *conn) failPending() {
	c.mu.Lock()
	pending := c.pending
	c.pending = nil
	err := c.failed
	c.mu.Unlock()
	for _, req := range pending {
		if req.err == nil {
			req.err = err
		}
		close(req.done)
		<-c.slots
	}
}

func (c *conn) lookup(cookie uint64) *request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending[cookie]
}

// abort marks the connection dead and closes the socket; the reader then
// fails every pending request. It is idempotent.
func (c *conn) abort(err error) {
	c.mu.Lock()
	if c.failed == nil {
		c.failed = err
	}
	c.mu.Unlock()
	c.nc.Close()
}

func (c *conn) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failed
}

// do sends req (with payload for WRITE) and waits for its reply. If ctx ends
// first, the connection is failed: the server may still answer, and nothing
// may write into a buffer the caller has taken back.
func (c *conn) do(ctx context.Context, req *request, flags uint16, payload []byte) error {
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	req.done = make(chan struct{})
	c.mu.Lock()
	if c.failed != nil || c.pending == nil {
		err := c.failed
		c.mu.Unlock()
		<-c.slots
		if err == nil {
			err = ErrClosed
		}
		return err
	}
	c.cookie++
	cookie := c.cookie
	c.pending[cookie] = req
	c.mu.Unlock()

	var hdr [28]byte
	binary.BigEndian.PutUint32(hdr[0:4], magicRequest)
	binary.BigEndian.PutUint16(hdr[4:6], flags)
	binary.BigEndian.PutUint16(hdr[6:8], req.cmd)
	binary.BigEndian.PutUint64(hdr[8:16], cookie)
	binary.BigEndian.PutUint64(hdr[16:24], req.offset)
	binary.BigEndian.PutUint32(hdr[24:28], req.length)
	c.wmu.Lock()
	bufs := net.Buffers{hdr[:]}
	if len(payload) > 0 {
		bufs = append(bufs, payload)
	}
	_, werr := bufs.WriteTo(c.nc)
	c.wmu.Unlock()
	if werr != nil {
		c.abort(fmt.Errorf("%w: write request: %v", ErrClosed, werr))
	}

	var expired <-chan time.Time
	if c.timeout > 0 {
		t := time.NewTimer(c.timeout)
		defer t.Stop()
		expired = t.C
	}
	select {
	case <-req.done:
	case <-ctx.Done():
		c.abort(fmt.Errorf("%w: request abandoned: %v", ErrClosed, ctx.Err()))
		<-req.done
		return ctx.Err()
	case <-expired:
		// A server that stops answering would hold the copy for ever;
		// give up on the connection so the caller sees an error.
		c.abort(fmt.Errorf("%w: no reply within %v", ErrTimeout, c.timeout))
		<-req.done
		return req.err
	}
	return req.err
}

// close ends the session politely (NBD_CMD_DISC) and waits for the reader.
func (c *conn) close() error {
	if c.err() == nil {
		var hdr [28]byte
		binary.BigEndian.PutUint32(hdr[0:4], magicRequest)
		binary.BigEndian.PutUint16(hdr[6:8], cmdDisc)
		c.wmu.Lock()
		_, _ = c.nc.Write(hdr[:])
		c.wmu.Unlock()
	}
	c.abort(ErrClosed)
	<-c.done
	return nil
}
