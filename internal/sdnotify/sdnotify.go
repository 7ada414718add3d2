// Package sdnotify speaks systemd's notify protocol (sd_notify(3)): one
// datagram of newline-separated KEY=VALUE lines to the unix socket named by
// $NOTIFY_SOCKET. It is a few lines of standard library, so taskd does not
// take a dependency for it. Without $NOTIFY_SOCKET every call is a no-op.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Messages taskd sends.
const (
	Ready    = "READY=1"
	Stopping = "STOPPING=1"
	Watchdog = "WATCHDOG=1"
)

// Notifier sends to one socket.
type Notifier struct{ addr string }

// FromEnv returns the notifier systemd configured, or nil when taskd does
// not run under a Type=notify unit.
func FromEnv() *Notifier {
	a := os.Getenv("NOTIFY_SOCKET")
	if a == "" {
		return nil
	}
	return &Notifier{addr: a}
}

// Send sends the lines as one datagram. A nil Notifier sends nothing.
func (n *Notifier) Send(lines ...string) error {
	if n == nil {
		return nil
	}
	addr := n.addr
	if strings.HasPrefix(addr, "@") { // abstract namespace
		addr = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Join(lines, "\n"))); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// WatchdogInterval returns the watchdog timeout systemd expects pings
// within ($WATCHDOG_USEC, for this process per $WATCHDOG_PID), and false
// when no watchdog is configured.
func WatchdogInterval() (time.Duration, bool) {
	us, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || us <= 0 {
		return 0, false
	}
	if p := os.Getenv("WATCHDOG_PID"); p != "" && p != strconv.Itoa(os.Getpid()) {
		return 0, false
	}
	return time.Duration(us) * time.Microsecond, true
}

// Parse splits a datagram into its KEY=VALUE pairs. It is the receiving
// side of Send, for tests and tools.
func Parse(datagram []byte) (map[string]string, error) {
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimRight(string(datagram), "\n"), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return nil, errors.New("sd_notify: line without KEY=VALUE: " + strconv.Quote(line))
		}
		out[k] = v
	}
	return out, nil
}
