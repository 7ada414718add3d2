// Package volcmd is the command line of a local volume copy, shared by
// `taskd volume copy` and `taskd-copy`. taskd-copy is the same command in a
// binary that does not link the daemon (etcd, gRPC, the API): it starts in
// about a tenth of the time, which is most of a small copy's overhead over
// cp (docs/volume-copy.md#how-a-copy-moves-data).
package volcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/taskd/taskd/internal/nbd"
	"github.com/taskd/taskd/internal/volcopy"
	"github.com/taskd/taskd/internal/volume"
)

// Exit codes of `taskd volume copy` and taskd-copy (docs/exit-codes.md).
const (
	ExitOK              = 0
	ExitCopyFailed      = 1 // I/O error during the copy; resume with --checkpoint
	ExitUsage           = 2 // bad input, refused before anything was written
	ExitCopyInterrupted = 4 // SIGINT/SIGTERM; the last checkpoint is saved
	ExitCopyVerify      = 5 // --verify found a target extent that differs
)

// ErrInterrupted is returned when a signal stopped the copy.
var ErrInterrupted = errors.New("interrupted")

// UsageError marks bad input: nothing was written.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// ExitCode maps an error of the copy command to its exit code.
func ExitCode(err error) int {
	var ue UsageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ue):
		return ExitUsage
	case errors.Is(err, ErrInterrupted):
		return ExitCopyInterrupted
	case errors.Is(err, volcopy.ErrVerify):
		return ExitCopyVerify
	}
	return ExitCopyFailed
}

// NewCopyCmd is the copy command; use names it ("copy SRC DST" under
// `taskd volume`, "taskd-copy SRC DST" on its own).
func NewCopyCmd(use string) *cobra.Command {
	var (
		spec       volcopy.Spec
		rate       string
		reqSize    string
		extentSize string
		checkpoint string
		rateFile   string
		progress   string
		conns      int
		direct     string
		zero       string
	)
	cmd := &cobra.Command{
		Use:   use,
		Short: "Copy a volume: sparse-aware, incremental, resumable",
		Long: `Copy SRC onto DST in this process, with the rights of the user who runs it.
SRC and DST are file:///PATH (a file or block device; a bare path works too),
nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH. A missing DST file is
created with the source's size. Only allocated data is read; all-zero blocks
become holes. With --checkpoint FILE the copy saves its position after every
extent and, when FILE exists, resumes from it.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return UsageError{fmt.Errorf("volume copy needs SRC and DST, got %d arguments", len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			spec.Source, spec.Target = fileURI(args[0]), fileURI(args[1])
			if spec.Base != "" {
				spec.Base = fileURI(spec.Base)
			}
			if spec.Rate, err = volcopy.ParseBytes(rate); err != nil {
				return UsageError{fmt.Errorf("--rate: %w", err)}
			}
			r, err := parseOptionalBytes(reqSize)
			if err != nil {
				return UsageError{fmt.Errorf("--request-size: %w", err)}
			}
			spec.RequestSize = int(r)
			if spec.ExtentSize, err = parseOptionalBytes(extentSize); err != nil {
				return UsageError{fmt.Errorf("--extent-size: %w", err)}
			}
			if rateFile != "" {
				if spec.Rate, err = readRateFile(rateFile, spec.Rate); err != nil {
					return UsageError{fmt.Errorf("--rate-file: %w", err)}
				}
			}
			d, err := volcopy.ParseDirectIO(direct)
			if err != nil {
				return UsageError{fmt.Errorf("--direct-io: %w", err)}
			}
			spec.ZeroDetect = zero
			if _, err := volcopy.ParseZeroDetect(zero); err != nil {
				return UsageError{fmt.Errorf("--zero-detect: %w", err)}
			}
			return runVolumeCopy(cmd.Context(), cmd.ErrOrStderr(), spec, checkpoint, rateFile, progress, d, volume.Options{NBD: nbd.Options{Connections: conns}})
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.Base, "base", "", "incremental: the base the target already holds; only blocks that differ from it are written")
	f.StringVar(&spec.DirtyBitmap, "dirty-bitmap", "", "incremental: read only the extents this NBD dirty bitmap marks")
	f.BoolVar(&spec.TargetIsZero, "target-is-zero", false, "the target reads as zeros already: skip zeroing holes")
	f.BoolVar(&spec.Verify, "verify", false, "hash every extent of source and target (XXH3) after it is flushed")
	f.BoolVar(&spec.Manifest, "manifest", false, "incremental: keep a block hash manifest beside the file target (.NAME.taskd-manifest); the next copy with --manifest reads only the source and writes the blocks that changed")
	f.StringVar(&zero, "zero-detect", "auto", "which data is scanned for zero blocks (written as holes): auto (unless the source is a file without holes), always, never")
	f.StringVar(&rate, "rate", "0", "limit reads to this many bytes per second (K/M/G suffixes, 0 = unlimited)")
	f.StringVar(&rateFile, "rate-file", "", "file holding the rate (as --rate), read at start and again at every SIGHUP: changes the rate while the copy runs")
	f.IntVar(&spec.Workers, "workers", 0, "requests in flight (default: chosen from the endpoints, 32 with NBD)")
	// Empty defaults: the engine picks from the endpoints; help then shows one default.
	f.StringVar(&reqSize, "request-size", "", "bytes per request (K/M/G suffixes; default: chosen from the endpoints)")
	f.StringVar(&extentSize, "extent-size", "", "bytes per checkpoint extent (K/M/G suffixes; default 256M)")
	f.StringVar(&checkpoint, "checkpoint", "", "save the checkpoint to FILE after each extent; resume from FILE when it exists")
	f.StringVar(&progress, "progress", "auto", "progress display: auto (bar on a terminal, log lines otherwise), bar, log, none")
	f.IntVar(&conns, "connections", 4, "NBD connections when the server allows multi-conn")
	f.StringVar(&direct, "direct-io", "auto", "bypass the page cache (O_DIRECT) for files and block devices: auto (block devices only), on, off")
	return cmd
}

// parseOptionalBytes is volcopy.ParseBytes, with "" for the engine's default.
func parseOptionalBytes(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	return volcopy.ParseBytes(s)
}

// fileURI lets the local command take plain paths.
func fileURI(s string) string {
	if strings.Contains(s, "://") {
		return s
	}
	if abs, err := filepath.Abs(s); err == nil {
		return "file://" + abs
	}
	return s
}

// readRateFile reads a rate as --rate takes it; a missing or empty file
// keeps def.
func readRateFile(path string, def int64) (int64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return def, nil
	}
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return def, nil
	}
	return volcopy.ParseBytes(s)
}

// followRateFile applies the rate in path at every signal on hup until
// ctx ends.
func followRateFile(ctx context.Context, stderr io.Writer, path string, job *volcopy.Job, hup <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		r, err := readRateFile(path, 0)
		if err != nil {
			fmt.Fprintf(stderr, "rate unchanged: %s: %v\n", path, err)
			continue
		}
		job.SetRate(r)
		if r == 0 {
			fmt.Fprintln(stderr, "rate now unlimited")
		} else {
			fmt.Fprintf(stderr, "rate now %s/s\n", humanBytes(r))
		}
	}
}

func runVolumeCopy(ctx context.Context, stderr io.Writer, spec volcopy.Spec, cpFile, rateFile, progress string, direct volcopy.DirectIO, env volume.Options) error {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	opts := volcopy.Options{Logger: log, DirectIO: direct}
	if cpFile != "" {
		b, err := os.ReadFile(cpFile)
		switch {
		case err == nil && len(b) > 0:
			opts.Resume = b
			fmt.Fprintf(stderr, "resuming from checkpoint %s\n", cpFile)
		case err != nil && !errors.Is(err, os.ErrNotExist):
			return UsageError{fmt.Errorf("read checkpoint: %w", err)}
		}
		opts.OnCheckpoint = func(cp []byte) error { return writeFileAtomic(cpFile, cp) }
	}
	mode := progress
	if mode == "auto" {
		mode = "log"
		if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			mode = "bar"
		}
	}
	var bar *progressbar.ProgressBar
	switch mode {
	case "bar":
		// The bar draws the percentage; its description the rest, in
		// the units of the log lines (IEC), not the bar's own (SI).
		// No spinner ticker: a goroutine of its own that nothing joins.
		bar = progressbar.NewOptions64(-1, progressbar.OptionSetWriter(stderr), progressbar.OptionSetSpinnerChangeInterval(0),
			progressbar.OptionSetDescription("copy"), progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionFullWidth())
		opts.ProgressInterval = 250 * time.Millisecond
		opts.OnProgress = func(p volcopy.Progress) {
			bar.ChangeMax64(max(p.AllocatedTotal, 1))
			_ = bar.Set64(min(p.AllocatedDone, max(p.AllocatedTotal, 1)))
			bar.Describe("copy " + progressDetail(p))
		}
	case "log":
		opts.ProgressInterval = 5 * time.Second
		opts.OnProgress = func(p volcopy.Progress) { fmt.Fprintln(stderr, formatProgress(p)) }
	case "none":
	default:
		return UsageError{fmt.Errorf("--progress %q: want auto, bar, log or none", progress)}
	}

	job, err := volcopy.Prepare(ctx, spec, env, opts)
	if err != nil {
		return UsageError{err}
	}
	defer job.Close()
	var follow sync.WaitGroup
	fctx, stopFollow := context.WithCancel(ctx)
	if rateFile != "" {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		follow.Add(1)
		go func() { defer follow.Done(); followRateFile(fctx, stderr, rateFile, job, hup) }()
	}
	started := time.Now()
	p, err := job.Run(ctx)
	elapsed := time.Since(started)
	stopFollow()
	follow.Wait()
	if bar != nil {
		// Where the copy stopped (not 100% for a failed one), and the
		// line ended before the result.
		_ = bar.Exit()
		fmt.Fprintln(stderr)
	}
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return fmt.Errorf("%w: copy stopped at %s of %s (%s)", ErrInterrupted, humanBytes(p.LogicalDone), humanBytes(p.LogicalTotal), checkpointHint(cpFile))
	case errors.Is(err, volcopy.ErrVerify):
		return err
	default:
		return fmt.Errorf("copy failed: %w (%s)", err, checkpointHint(cpFile))
	}
	if cpFile != "" {
		os.Remove(cpFile)
	}
	fmt.Fprint(stderr, summary(p, elapsed, spec.Verify))
	return nil
}

// summary ends a successful copy: what it moved, in how long and how fast
// on average, and a verified line only when extents were hashed on both
// sides (saying which ones, if a resumed run verified only its own).
func summary(p volcopy.Progress, elapsed time.Duration, verify bool) string {
	avg := "-"
	if s := elapsed.Seconds(); s > 0 {
		avg = humanBytes(int64(float64(p.BytesRead)/s)) + "/s"
	}
	out := fmt.Sprintf("copied %s in %s (average %s): read %s, wrote %s, zeroed %s\n", humanBytes(p.LogicalTotal),
		elapsed.Round(time.Millisecond), avg, humanBytes(p.BytesRead), humanBytes(p.BytesWritten), humanBytes(p.BytesZeroed))
	switch {
	case !verify || p.ExtentsVerified == 0:
	case p.ExtentsVerified >= p.ExtentsTotal:
		if p.ExtentsVerified == 1 {
			out += "verified: source and target hash equal (XXH3, one checkpoint unit)\n"
		} else {
			out += fmt.Sprintf("verified: all %d checkpoint units of source and target hash equal (XXH3)\n", p.ExtentsVerified)
		}
	default:
		out += fmt.Sprintf("verified: the %d of %d checkpoint units this run copied hash equal (XXH3); the %d copied before the checkpoint were not verified by this run\n",
			p.ExtentsVerified, p.ExtentsTotal, p.ExtentsTotal-p.ExtentsVerified)
	}
	return out
}

func checkpointHint(cpFile string) string {
	if cpFile == "" {
		return "no --checkpoint given: a rerun starts over"
	}
	return "rerun the same command to resume from " + cpFile
}

func formatProgress(p volcopy.Progress) string {
	pct := 100.0
	if p.AllocatedTotal > 0 {
		pct = 100 * float64(p.AllocatedDone) / float64(p.AllocatedTotal)
	}
	return fmt.Sprintf("copy: %5.1f%% %s / %s (logical %s / %s), %s/s, eta %s", pct, humanBytes(p.AllocatedDone), humanBytes(p.AllocatedTotal),
		humanBytes(p.LogicalDone), humanBytes(p.LogicalTotal), humanBytes(int64(p.Rate)), etaText(p))
}

// progressDetail is "2.0 GiB / 4.0 GiB, 180 MiB/s, eta 12s" in allocated
// bytes (what the copy reads, and what its rate and ETA measure).
func progressDetail(p volcopy.Progress) string {
	return fmt.Sprintf("%s / %s, %s/s, eta %s", humanBytes(p.AllocatedDone), humanBytes(p.AllocatedTotal), humanBytes(int64(p.Rate)), etaText(p))
}

// etaText is the time left, or "unknown" when the copy cannot estimate it
// (no rate yet, or stalled).
func etaText(p volcopy.Progress) string {
	switch {
	case p.AllocatedDone >= p.AllocatedTotal:
		return "0s"
	case p.ETA <= 0:
		return "unknown"
	}
	return p.ETA.Round(time.Second).String()
}

func humanBytes(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
