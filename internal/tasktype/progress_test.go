package tasktype_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/taskd/taskd/internal/task"
	"github.com/taskd/taskd/internal/tasktype"
)

// progressReporter records every progress a copy reports.
type progressReporter struct {
	copyReporter
	mu   sync.Mutex
	seen []task.Progress
}

func (r *progressReporter) Progress(p task.Progress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, p)
}

func (r *progressReporter) Checkpoint(_ []byte, p task.Progress) error {
	r.Progress(p)
	return nil
}

// TestCopyProgressCountsAllocatedBytes (issue 13): a sparse copy reported
// its progress in logical bytes while its rate and ETA were in allocated
// bytes, so the percentage jumped over holes and the ETA did not match it.
// A 64 MiB file with 4 MiB of data reports 4 MiB as its total.
func TestCopyProgressCountsAllocatedBytes(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i*7 + 1)
	}
	if _, err := f.WriteAt(data, 32<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	raw, _ := json.Marshal(map[string]any{"source": "file://" + src, "target": "file://" + filepath.Join(root, "dst"), "node": "n1"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var r progressReporter
	if err := (tasktype.Copy{Roots: []string{root}}).Run(ctx, raw, nil, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.seen) == 0 {
		t.Fatal("no progress reported")
	}
	last := r.seen[len(r.seen)-1]
	if last.Total != int64(len(data)) || last.Done != last.Total {
		t.Fatalf("final progress %d/%d, want %d/%d (allocated bytes, not the 64 MiB logical size)", last.Done, last.Total, len(data), len(data))
	}
	for _, p := range r.seen {
		if p.Total == 0 && p.Done == 0 {
			continue // before the extents are mapped
		}
		if p.Total != int64(len(data)) || p.Done > p.Total {
			t.Errorf("progress %d/%d, want a total of %d allocated bytes", p.Done, p.Total, len(data))
		}
	}
}
