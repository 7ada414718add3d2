package task

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestLogBounds(t *testing.T) {
	line := func(s string) LogLine { return LogLine{Attempt: 1, Text: s} }
	cases := []struct {
		name        string
		lines       []LogLine
		wantKept    int
		wantDropped int64
		wantFirst   int64
	}{
		{"few", []LogLine{line("a"), line("b")}, 2, 0, 1},
		{"lines bound", repeat(line("x"), LogMaxLines+5), LogMaxLines, 5, 6},
		// 100 lines of 1 KiB: 64 KiB hold 64 of them.
		{"bytes bound", repeat(line(strings.Repeat("y", 1024)), 100), 64, 36, 37},
		// A line over LogMaxLine is cut, not dropped.
		{"long line", []LogLine{line(strings.Repeat("z", 3*LogMaxLine))}, 1, 0, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var l Log
			// Two appends: the bounds hold across writes.
			half := len(c.lines) / 2
			l.Append(c.lines[:half]...)
			l.Append(c.lines[half:]...)
			size := 0
			for i, ln := range l.Lines {
				size += len(ln.Text)
				if len(ln.Text) > LogMaxLine {
					t.Errorf("line %d has %d bytes", i, len(ln.Text))
				}
				if i > 0 && ln.Seq != l.Lines[i-1].Seq+1 {
					t.Errorf("seq %d after %d", ln.Seq, l.Lines[i-1].Seq)
				}
			}
			if len(l.Lines) != c.wantKept || l.Dropped != c.wantDropped || l.Lines[0].Seq != c.wantFirst {
				t.Fatalf("kept %d dropped %d first seq %d; want %d %d %d", len(l.Lines), l.Dropped, l.Lines[0].Seq, c.wantKept, c.wantDropped, c.wantFirst)
			}
			if size > LogMaxBytes || len(l.Lines) > LogMaxLines {
				t.Fatalf("%d lines, %d bytes: over the bounds", len(l.Lines), size)
			}
			if l.Next() != int64(len(c.lines))+1 {
				t.Fatalf("next seq %d after %d lines", l.Next(), len(c.lines))
			}
			if got := l.After(l.Lines[len(l.Lines)-1].Seq - 1); len(got) != 1 {
				t.Fatalf("After(last-1) gave %d lines", len(got))
			}
			if got := l.After(0); len(got) != len(l.Lines) {
				t.Fatalf("After(0) gave %d of %d lines", len(got), len(l.Lines))
			}
		})
	}
	// Cutting never splits a UTF-8 sequence.
	var l Log
	l.Append(line(strings.Repeat("é", LogMaxLine)))
	if s := l.Lines[0].Text; !utf8.ValidString(s) || len(s) > LogMaxLine {
		t.Fatalf("cut line: %d bytes, valid %v", len(s), utf8.ValidString(s))
	}
}

func repeat(l LogLine, n int) []LogLine {
	out := make([]LogLine, n)
	for i := range out {
		out[i] = l
	}
	return out
}
