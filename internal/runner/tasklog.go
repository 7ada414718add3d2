package runner

import (
	"context"
	"errors"

	"github.com/taskd/taskd/internal/coord"
	"github.com/taskd/taskd/internal/task"
)

// AppendLog adds a line to the task's output log (the exec type's output
// and log lines). It never waits for the store: the line is stored with
// the attempt's next record write (FlushLog, a progress write, a
// checkpoint, the final write), on the same conditions (the record's
// version and the runner's session), so a fenced attempt adds nothing.
// Pending lines are kept within the log's line bound.
func (a *attempt) AppendLog(text string) {
	if a.finishing() {
		return
	}
	a.logMu.Lock()
	a.logPending = append(a.logPending, task.LogLine{At: a.s.r.clock.Now().UTC(), Attempt: a.n, Text: text})
	if n := len(a.logPending); n > task.LogMaxLines {
		a.logPending = append([]task.LogLine(nil), a.logPending[n-task.LogMaxLines:]...)
	}
	a.logMu.Unlock()
}

// FlushLog writes the pending log lines if a record write is due (one
// every ProgressInterval at most).
func (a *attempt) FlushLog() {
	a.logMu.Lock()
	pending := len(a.logPending) > 0
	a.logMu.Unlock()
	a.mu.Lock()
	due := a.s.r.clock.Now().Sub(a.lastWrite) >= a.s.r.cfg.ProgressInterval
	a.mu.Unlock()
	if !pending || !due || a.finishing() {
		return
	}
	if err := a.writeOnce(func(*task.Record) bool { return false }); err != nil {
		a.log.Debug("log write failed", "err", err)
	}
}

// withLog returns the transaction of a record write, extended with the
// pending log lines if there are any, and the function to call with the
// write's outcome.
func (a *attempt) withLog(ctx context.Context, txn task.TxnFunc) (task.TxnFunc, func(error), error) {
	a.logMu.Lock()
	defer a.logMu.Unlock()
	if len(a.logPending) == 0 {
		return txn, func(error) {}, nil
	}
	st := a.s.r.store
	if a.logStored == nil {
		l, err := st.ReadLog(ctx, a.id)
		if err != nil {
			return nil, nil, err
		}
		a.logStored = l
	}
	next := a.logStored.Clone()
	next.Append(a.logPending...)
	sent := len(a.logPending)
	cond, op, err := st.LogWrite(a.id, next)
	if err != nil {
		return nil, nil, err
	}
	var version int64
	wrapped := func(ctx context.Context, conds []coord.Cond, ops []coord.Op) ([]int64, error) {
		vers, err := txn(ctx, append(conds, cond), append(ops, op))
		if err == nil {
			version = vers[len(vers)-1]
		}
		return vers, err
	}
	stored := func(err error) {
		a.logMu.Lock()
		defer a.logMu.Unlock()
		switch {
		case err == nil:
			next.Stored(version)
			a.logStored = next
			a.logPending = append([]task.LogLine(nil), a.logPending[sent:]...)
		case errors.Is(err, coord.ErrConflict):
			a.logStored = nil // read it again: the record or the log moved
		}
	}
	return wrapped, stored, nil
}
