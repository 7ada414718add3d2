//go:build testaids

package tasktype

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/taskd/taskd/internal/task"
)

// sleepAids are the sleep task's test aids. They exist only in binaries
// built with -tags testaids (the test harness builds taskd that way): the
// ledger writes, as root, to a file a request names.
type sleepAids struct {
	// Ledger, when set, is a file the task appends one line to per unit
	// of work: "ID ATTEMPT ELAPSED_MS UNIX_NANO". Tests use it to prove
	// that no two attempts of a task were ever active at the same instant.
	Ledger string `json:"ledger"`
}

// record appends a ledger line saying that the attempt was active at the
// instant at, the moment just before Active confirmed it.
func (a sleepAids) record(r task.Reporter, elapsed time.Duration, at time.Time) error {
	if a.Ledger == "" {
		return nil
	}
	f, err := os.OpenFile(a.Ledger, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("sleep ledger: %w", err)
	}
	_, err = fmt.Fprintf(f, "%s %d %d %d\n", r.TaskID(), r.Attempt(), elapsed.Milliseconds(), at.UnixNano())
	return errors.Join(err, f.Close())
}
