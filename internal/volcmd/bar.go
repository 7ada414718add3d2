package volcmd

import (
	"fmt"
	"io"
	"math"
	"strings"
	"sync"

	"github.com/taskd/taskd/internal/volcopy"
)

// progressBar redraws one terminal line:
//
//	copy  50% [##########          ] 2.0 GiB / 4.0 GiB, 180 MiB/s, eta 12s
//
// It is ours, not a library's: the one it replaced (schollz/progressbar)
// imports net/http, and with it crypto/tls and the FIPS module, whose
// package initialisation cost taskd-copy a third of its start-up. The copy
// calls draw every ProgressInterval; it needs no goroutine of its own.
type progressBar struct {
	mu    sync.Mutex
	w     io.Writer
	width func() int // terminal columns; 0 when unknown
}

// minBarCells is the narrowest bar worth drawing; a narrower terminal gets
// the figures without it.
const minBarCells = 10

func (b *progressBar) draw(p volcopy.Progress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	// \r back to the line's start, \x1b[K clears what a longer line left.
	fmt.Fprint(b.w, "\r"+barLine(p, b.width())+"\x1b[K")
}

// finish draws where the copy stopped (not 100% for a failed one) and ends
// the line, so that the result starts on a line of its own.
func (b *progressBar) finish(p volcopy.Progress) {
	b.draw(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	fmt.Fprintln(b.w)
}

// barLine is the bar's text for a terminal of width columns (0: unknown,
// taken as 80). It never fills the last column, where some terminals wrap.
func barLine(p volcopy.Progress, width int) string {
	if width <= 0 {
		width = 80
	}
	frac := 1.0
	if p.AllocatedTotal > 0 {
		frac = math.Min(math.Max(float64(p.AllocatedDone)/float64(p.AllocatedTotal), 0), 1)
	}
	head := fmt.Sprintf("copy %3d%% ", int(frac*100))
	tail := " " + progressDetail(p)
	cells := width - 1 - len(head) - len(tail) - 2
	line := head + strings.TrimPrefix(tail, " ")
	if cells >= minBarCells {
		full := int(frac * float64(cells))
		line = head + "[" + strings.Repeat("#", full) + strings.Repeat(" ", cells-full) + "]" + tail
	}
	if len(line) > width-1 {
		line = line[:max(width-1, 0)]
	}
	return line
}

// humanBytes is an IEC size as go-humanize's IBytes writes it ("0 B",
// "512 B", "4.0 KiB", "120 MiB"), without its package (it links math/big
// and initialises big numbers at start-up).
func humanBytes(n int64) string {
	s := uint64(max(n, 0))
	if s < 10 {
		return fmt.Sprintf("%d B", s)
	}
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	e := math.Floor(math.Log(float64(s)) / math.Log(1024))
	val := math.Floor(float64(s)/math.Pow(1024, e)*10+0.5) / 10
	if val < 10 {
		return fmt.Sprintf("%.1f %s", val, units[int(e)])
	}
	return fmt.Sprintf("%.0f %s", val, units[int(e)])
}
