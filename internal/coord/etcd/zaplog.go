package etcd

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// slogCore forwards the embedded server's zap logs to slog, so that taskd
// writes one log stream in one format. While the server is closing, etcd
// reports its listeners closing as errors; those are expected and go to
// debug level.
type slogCore struct {
	log     *slog.Logger
	level   zapcore.Level
	fields  []zapcore.Field
	closing *atomic.Bool
}

func newZapLogger(log *slog.Logger, level string, closing *atomic.Bool) (*zap.Logger, error) {
	lv, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, err
	}
	return zap.New(&slogCore{log: log.With("component", "etcd"), level: lv, closing: closing}), nil
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= c.level }

func (c *slogCore) With(fs []zapcore.Field) zapcore.Core {
	n := *c
	n.fields = append(append([]zapcore.Field(nil), c.fields...), fs...)
	return &n
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(append([]zapcore.Field(nil), c.fields...), fs...) {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields))
	for k, v := range enc.Fields {
		attrs = append(attrs, slog.Any(k, v))
	}
	lv := slog.LevelInfo
	switch {
	case e.Level >= zapcore.ErrorLevel:
		lv = slog.LevelError
	case e.Level == zapcore.WarnLevel:
		lv = slog.LevelWarn
	case e.Level <= zapcore.DebugLevel:
		lv = slog.LevelDebug
	}
	if c.closing.Load() && strings.Contains(e.Message, "serving") {
		lv = slog.LevelDebug
	}
	c.log.LogAttrs(context.Background(), lv, e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
