package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// lastExit is what a run leaves in the data directory when it exits, so
// that the next start can say how the previous run ended.
type lastExit struct {
	Code   int       `json:"code"`
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
}

const lastExitFile = "last-exit.json"

// RecordExit writes the exit code and reason of this run into dir.
func RecordExit(dir string, code int, reason string) error {
	b, _ := json.Marshal(lastExit{Code: code, Reason: reason, Time: time.Now().UTC()})
	tmp := filepath.Join(dir, lastExitFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, lastExitFile))
}

// previousExit describes how the previous run ended and removes the
// record, so that a crash of this run is not mistaken for a clean exit.
func previousExit(dir string) (code string, reason string) {
	p := filepath.Join(dir, lastExitFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return "none", "no exit recorded: first start, or the previous run was killed (kill -9, power loss) or crashed"
	}
	var le lastExit
	if err != nil || json.Unmarshal(b, &le) != nil {
		return "unknown", fmt.Sprintf("unreadable %s", p)
	}
	_ = os.Remove(p)
	return fmt.Sprint(le.Code), fmt.Sprintf("%s (at %s)", le.Reason, le.Time.Format(time.RFC3339))
}
