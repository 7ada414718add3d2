package vipaddr

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sync"
)

// LabelFile is a node's record of the labels of every VIP it has held
// (DATA_DIR/vip-labels.json), so that a restart after a crash can remove
// what it left (Cleanup).
type LabelFile struct {
	mu   sync.Mutex
	path string
}

// NewLabelFile keeps the labels in the file at path.
func NewLabelFile(path string) *LabelFile { return &LabelFile{path: path} }

// Labels returns the recorded labels; a missing or damaged file has none
// (it only loses the cleanup hint).
func (l *LabelFile) Labels() []string {
	b, err := os.ReadFile(l.path)
	if err != nil {
		return nil
	}
	var out []string
	_ = json.Unmarshal(b, &out)
	return out
}

// Add records label; call it before the address is added.
func (l *LabelFile) Add(label string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	cur := l.Labels()
	if slices.Contains(cur, label) {
		return nil
	}
	b, _ := json.Marshal(append(cur, label))
	tmp := l.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o640); err != nil {
		return fmt.Errorf("record vip label: %w", err)
	}
	if err := os.Rename(tmp, l.path); err != nil {
		return fmt.Errorf("record vip label: %w", err)
	}
	return nil
}
