// Package clockstep tells when the system's wall clock is set (an NTP
// step, an operator's date -s, a wrong RTC corrected at boot): the kernel
// cancels a CLOCK_REALTIME timerfd armed with TFD_TIMER_CANCEL_ON_SET
// whenever the clock is set, so nothing is polled.
package clockstep

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"

	"golang.org/x/sys/unix"
)

// Watch calls notify each time the wall clock is set, until ctx ends.
func Watch(ctx context.Context, notify func()) error {
	fd, err := unix.TimerfdCreate(unix.CLOCK_REALTIME, unix.TFD_CLOEXEC|unix.TFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("timerfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "clockstep-timerfd") // non-blocking: reads park in the poller
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	defer f.Close()
	buf := make([]byte, 8)
	for {
		// Armed at the end of time, absolute: it never expires; it is
		// only ever cancelled by a setting of the clock.
		never := unix.ItimerSpec{Value: unix.Timespec{Sec: math.MaxInt32}}
		if err := unix.TimerfdSettime(fd, unix.TFD_TIMER_ABSTIME|unix.TFD_TIMER_CANCEL_ON_SET, &never, nil); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("arm timerfd: %w", err)
		}
		_, err := f.Read(buf)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, unix.ECANCELED):
			notify()
		case err != nil:
			return fmt.Errorf("read timerfd: %w", err)
		}
	}
}
