package tasktype

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/taskd/taskd/internal/events"
	"github.com/taskd/taskd/internal/keys"
	"github.com/taskd/taskd/internal/task"
)

// Exit codes of an exec program (docs/task-types.md).
const (
	// ExitRetryable (EX_TEMPFAIL): the attempt failed; retry it.
	ExitRetryable = 75
	// ExitPermanent (EX_DATAERR): the task cannot succeed; fail it.
	ExitPermanent = 65
)

// StopGrace is how long a program has between SIGTERM and SIGKILL when
// its attempt is asked to stop (cancel, pause, drain, window).
const StopGrace = 10 * time.Second

// drainBound bounds the reading of protocol lines after the program
// exited.
const drainBound = 5 * time.Second

// maxLine bounds one protocol line from a program.
const maxLine = 1 << 20

// Exec runs an operator-installed program as a task type: the spec on
// stdin, the last checkpoint in the file TASKD_CHECKPOINT_FILE names (only
// on resume), JSON lines on fd 3 for progress, checkpoints and log lines.
type Exec struct {
	Name string
	Path string
	Log  *slog.Logger
}

// ExecTypes registers one type per program in dir: an executable regular
// file named as a task type, in a directory owned by root and writable by
// no one else, itself owned by root and writable by no one else. A file
// that fails a check is skipped with a warning, never registered. A
// missing dir registers nothing.
func ExecTypes(dir string, builtin task.Registry, log *slog.Logger) (task.Registry, error) {
	out := task.Registry{}
	if dir == "" {
		return out, nil
	}
	if err := CheckExecDir(dir); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("--exec-dir %s: %w", dir, err)
	}
	for _, e := range ents {
		name, path := e.Name(), filepath.Join(dir, e.Name())
		refuse := func(why string) { log.Warn("exec task type not registered", "path", path, "reason", why) }
		if err := keys.ValidTaskType(name); err != nil {
			refuse(err.Error())
			continue
		}
		if _, ok := builtin[name]; ok {
			refuse("a built-in type has this name")
			continue
		}
		if err := rootOnly(path, false); err != nil {
			refuse(err.Error())
			continue
		}
		out[name] = Exec{Name: name, Path: path, Log: log}
		log.Info("exec task type registered", "type", name, "path", path)
	}
	return out, nil
}

// CheckExecDir refuses an exec directory that is not a directory owned
// by root and writable by no one else: whoever can write there could run
// code as root.
func CheckExecDir(dir string) error {
	if err := rootOnly(dir, true); err != nil {
		return fmt.Errorf("--exec-dir %s: %w", dir, err)
	}
	return nil
}

// rootOnly checks that path (not followed if a symlink) is owned by root,
// writable by no one else, and a directory (dir) or an executable regular
// file.
func rootOnly(path string, dir bool) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !ok:
		return errors.New("cannot read its owner")
	case dir && !fi.IsDir():
		return errors.New("not a directory")
	case !dir && !fi.Mode().IsRegular():
		return errors.New("not a regular file (symlinks are refused)")
	case !dir && fi.Mode().Perm()&0o100 == 0:
		return errors.New("not executable by its owner")
	case st.Uid != 0:
		return fmt.Errorf("owned by uid %d, not root", st.Uid)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("mode %v: writable by group or others", fi.Mode().Perm())
	}
	return nil
}

// Validate accepts any JSON spec (the store has checked it is JSON and its
// size); the program validates it and exits ExitPermanent if it is bad.
func (Exec) Validate(json.RawMessage) error { return nil }

// line is one protocol line on fd 3.
type line struct {
	Progress   *progressLine `json:"progress,omitempty"`
	Checkpoint *string       `json:"checkpoint,omitempty"`
	Log        string        `json:"log,omitempty"`
}

type progressLine struct {
	Done  int64 `json:"done"`
	Total int64 `json:"total"`
}

// Run starts the program and follows it to its end.
func (x Exec) Run(ctx context.Context, spec json.RawMessage, checkpoint []byte, r task.Reporter) error {
	log := x.Log.With("task", r.TaskID(), "attempt", r.Attempt(), "type", x.Name)
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8",
		"TASKD_TASK_ID=" + r.TaskID(), "TASKD_ATTEMPT=" + strconv.Itoa(r.Attempt()), "TASKD_PROTOCOL_FD=3"}
	if checkpoint != nil {
		f, err := os.CreateTemp("", "taskd-checkpoint-*")
		if err != nil {
			return fmt.Errorf("checkpoint file: %w", err)
		}
		defer os.Remove(f.Name())
		if _, err := f.Write(checkpoint); err != nil {
			f.Close()
			return fmt.Errorf("checkpoint file: %w", err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("checkpoint file: %w", err)
		}
		env = append(env, "TASKD_CHECKPOINT_FILE="+f.Name())
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("protocol pipe: %w", err)
	}
	defer pr.Close()
	cmd := exec.Command(x.Path)
	cmd.Env, cmd.Dir = env, "/"
	cmd.Stdin = bytesReader(spec)
	cmd.ExtraFiles = []*os.File{pw}
	tl, _ := r.(taskLog)
	out := &logWriter{log: log, task: tl}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	g, err := theGuard()
	if err != nil {
		pw.Close()
		return err // retryable: the program did not start
	}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return task.Permanent(fmt.Errorf("start %s: %w", x.Path, err))
	}
	pw.Close()
	pgid := cmd.Process.Pid
	kill := func(sig syscall.Signal) { _ = syscall.Kill(-pgid, sig) }
	af, _ := r.(activeFor)
	var first time.Duration // no deadline without a session
	if af != nil {
		first = max(af.ActiveFor(), time.Nanosecond)
	}
	if err := g.add(pgid, first); err != nil {
		kill(syscall.SIGKILL)
		_ = cmd.Wait()
		return err
	}
	// After the group was killed (the waited case): a pid reused in the
	// meantime is not ours to guard.
	defer func() { _ = g.remove(pgid) }()
	renew := func() error {
		if af == nil {
			return nil
		}
		return g.renew(pgid, af.ActiveFor())
	}
	tick := time.NewTicker(guardTick)
	defer tick.Stop()
	if tl != nil {
		// The log's store writes wait for the store; they must not hold
		// up the guard's renewals, so they have a goroutine of their own.
		flushCtx, stopFlush := context.WithCancel(context.Background())
		var flushing sync.WaitGroup
		flushing.Add(1)
		go func() {
			defer flushing.Done()
			t := time.NewTicker(guardTick)
			defer t.Stop()
			for {
				select {
				case <-flushCtx.Done():
					return
				case <-t.C:
					tl.FlushLog()
				}
			}
		}()
		defer func() { stopFlush(); flushing.Wait() }()
	}

	// The protocol reader ends at EOF (the program and its children
	// closed fd 3) or when a checkpoint is refused (fenced, stopped).
	protoErr := make(chan error, 1)
	go func() { protoErr <- x.follow(pr, r, tl, log) }()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	var stopErr error
	var grace <-chan time.Time
	for {
		select {
		case <-tick.C:
			if err := renew(); err != nil && stopErr == nil {
				// Without its guard the program could outlive a pause
				// of taskd; stop it.
				kill(syscall.SIGKILL)
				stopErr = err
			}
			continue
		case err := <-protoErr:
			protoErr = nil
			if err != nil {
				// Fenced or refused: another attempt may own the task
				// now; nothing of this one may go on.
				kill(syscall.SIGKILL)
				stopErr = err
			}
			continue
		case <-ctx.Done():
			if stopErr == nil {
				stopErr = context.Cause(ctx)
				if !errors.Is(stopErr, task.ErrStopAsked) {
					// Fenced, reassigned, or the session is ending:
					// another attempt may start soon; no grace.
					kill(syscall.SIGKILL)
				} else {
					kill(syscall.SIGTERM)
					t := time.NewTimer(StopGrace)
					defer t.Stop()
					grace = t.C
				}
			}
			ctx = context.Background() // handled once
			continue
		case <-grace:
			log.Warn("exec program did not stop within the grace; killing its process group", "grace", StopGrace)
			kill(syscall.SIGKILL)
			grace = nil
			continue
		case err := <-waited:
			kill(syscall.SIGKILL) // children left behind in the group
			if protoErr != nil {
				// The lines still in the pipe are read to its end, which
				// comes once the group's last holder of fd 3 is dead; a
				// holder that left the group is cut off after a bound.
				t := time.NewTimer(drainBound)
				select {
				case perr := <-protoErr:
					if perr != nil && stopErr == nil {
						stopErr = perr
					}
				case <-t.C:
					log.Warn("a process outside the program's group holds its protocol pipe; ignoring the rest", "bound", drainBound)
					pr.Close()
					<-protoErr
				}
				t.Stop()
			}
			if stopErr != nil {
				return stopErr
			}
			return exitError(x.Path, err, out.last())
		}
	}
}

// follow applies the program's protocol lines until EOF.
func (x Exec) follow(pr io.Reader, r task.Reporter, tl taskLog, log *slog.Logger) error {
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	var p task.Progress
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			log.Warn("exec program wrote a line that is not the protocol's JSON; ignored", "line", keys.Quote(sc.Text()))
			continue
		}
		if l.Progress != nil {
			p.Done, p.Total = l.Progress.Done, l.Progress.Total
		}
		if l.Log != "" {
			log.Info("exec program: "+l.Log, events.ExecLog.Attr())
			if tl != nil {
				tl.AppendLog(l.Log)
			}
		}
		switch {
		case l.Checkpoint != nil:
			if err := r.Checkpoint([]byte(*l.Checkpoint), p); err != nil {
				return fmt.Errorf("checkpoint refused: %w", err)
			}
		case l.Progress != nil:
			r.Progress(p)
		}
	}
	if err := sc.Err(); err != nil {
		return task.Permanent(fmt.Errorf("exec protocol: %w", err))
	}
	return nil
}

// exitError maps the program's end to the task's outcome.
func exitError(path string, err error, tail string) error {
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return fmt.Errorf("wait for %s: %w", path, err)
	}
	msg := fmt.Sprintf("%s: %v", filepath.Base(path), ee)
	if tail != "" {
		msg += ": " + tail
	}
	switch ee.ExitCode() {
	case ExitPermanent:
		return task.Permanent(errors.New(msg))
	default:
		// ExitRetryable, a crash, a signal: retryable within the budget.
		return errors.New(msg)
	}
}

// taskLog is implemented by reporters that keep the task's output log
// (the runner's attempts): the program's output and log lines go there.
type taskLog interface {
	AppendLog(text string)
	FlushLog()
}

// logWriter logs the program's stdout and stderr line by line, adds each
// line to the task's log and keeps the last line for the error message.
type logWriter struct {
	log  *slog.Logger
	task taskLog
	mu   sync.Mutex
	buf  []byte
	tail string
}

func (w *logWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			if len(w.buf) > 4096 {
				w.emit(string(w.buf))
				w.buf = w.buf[:0]
			}
			return len(b), nil
		}
		w.emit(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

func (w *logWriter) emit(s string) {
	w.tail = s
	w.log.Info("exec program output", events.ExecOutput.Attr(), "line", s)
	if w.task != nil {
		w.task.AppendLog(s)
	}
}

func (w *logWriter) last() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		return string(w.buf)
	}
	return w.tail
}
