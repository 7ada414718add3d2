package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/taskd/taskd/internal/coord"
)

// The bounds of a task's output log (docs/task-types.md): it keeps the
// newest LogMaxLines lines and LogMaxBytes bytes of text, dropping the
// oldest; a line longer than LogMaxLine is cut there. The whole log is one
// store key, rewritten by the runner with the attempt's record (at most
// about once a second, at each checkpoint and at the end), so that these
// bounds also bound every write.
const (
	LogMaxLines = 1000
	LogMaxBytes = 64 << 10
	LogMaxLine  = 4096
)

// LogLine is one line of a task's output.
type LogLine struct {
	// Seq numbers the task's lines from 1, across attempts: a follower
	// asks for the lines after the last it has.
	Seq     int64     `json:"seq"`
	At      time.Time `json:"at"`
	Attempt int       `json:"attempt"`
	Text    string    `json:"text"`
}

// Log is a task's bounded output log.
type Log struct {
	Lines []LogLine `json:"lines"`
	// Dropped counts the oldest lines dropped to stay within the bounds.
	Dropped int64 `json:"dropped"`
	version int64
}

// Next is the sequence number the next line gets.
func (l *Log) Next() int64 {
	if n := len(l.Lines); n > 0 {
		return l.Lines[n-1].Seq + 1
	}
	return l.Dropped + 1
}

// Append adds lines (their Seq is set here) and drops the oldest lines
// beyond the bounds.
func (l *Log) Append(lines ...LogLine) {
	for _, ln := range lines {
		ln.Seq = l.Next()
		ln.Text = cut(ln.Text, LogMaxLine)
		l.Lines = append(l.Lines, ln)
	}
	size := 0
	for _, ln := range l.Lines {
		size += len(ln.Text)
	}
	drop := 0
	for drop < len(l.Lines) && (len(l.Lines)-drop > LogMaxLines || size > LogMaxBytes) {
		size -= len(l.Lines[drop].Text)
		drop++
	}
	l.Dropped += int64(drop)
	l.Lines = append([]LogLine(nil), l.Lines[drop:]...)
}

// After returns the lines with a sequence number above seq.
func (l *Log) After(seq int64) []LogLine {
	for i, ln := range l.Lines {
		if ln.Seq > seq {
			return l.Lines[i:]
		}
	}
	return nil
}

// Clone copies l, version included.
func (l *Log) Clone() *Log {
	c := *l
	c.Lines = append([]LogLine(nil), l.Lines...)
	return &c
}

// cut shortens s to at most n bytes without splitting a UTF-8 sequence.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// ReadLog reads task id's output log; a task that wrote none has an empty
// one.
func (s *Store) ReadLog(ctx context.Context, id string) (*Log, error) {
	key, err := s.layout.LogKey(id)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	kv, err := s.kv.Get(ctx, key)
	if errors.Is(err, coord.ErrNotFound) {
		return &Log{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the log of task %s: %w", id, err)
	}
	var l Log
	if err := json.Unmarshal(kv.Value, &l); err != nil {
		return nil, fmt.Errorf("the log of task %s: %w", id, err)
	}
	l.version = kv.Version
	return &l, nil
}

// LogWrite is the condition and the operation that store l as task id's
// log in a transaction, on condition that the stored log is still the
// one l was read as; Stored gives l the version the transaction returned
// for the operation.
func (s *Store) LogWrite(id string, l *Log) (coord.Cond, coord.Op, error) {
	key, err := s.layout.LogKey(id)
	if err != nil {
		return coord.Cond{}, coord.Op{}, err
	}
	enc, err := json.Marshal(l)
	if err != nil {
		return coord.Cond{}, coord.Op{}, err
	}
	op := coord.PutOp(key, enc)
	if l.version == 0 {
		op = coord.CreateOp(key, enc, nil)
	}
	return coord.VersionIs(key, l.version), op, nil
}

// Stored records the version l has in the store after a write.
func (l *Log) Stored(version int64) { l.version = version }

// LogDelete returns the condition and operation that delete task id's
// log with a finished task, or ok false when it has none.
func (s *Store) LogDelete(ctx context.Context, id string) (c coord.Cond, op coord.Op, ok bool, err error) {
	key, err := s.layout.LogKey(id)
	if err != nil {
		return c, op, false, err
	}
	kv, err := s.kv.Get(ctx, key)
	if errors.Is(err, coord.ErrNotFound) {
		return c, op, false, nil
	}
	if err != nil {
		return c, op, false, fmt.Errorf("read the log of task %s: %w", id, err)
	}
	return coord.VersionIs(key, kv.Version), coord.DeleteOp(key), true, nil
}
