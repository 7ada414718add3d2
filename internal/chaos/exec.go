package chaos

import (
	"fmt"
	"os"
	"path/filepath"
)

// execType is the campaign's exec task type (docs/task-types.md): a
// checkpointing shell program installed in every node's --exec-dir.
const execType = "chaoscount"

// execProgram counts 20 steps of 300 ms, checkpointing after each and
// resuming from its checkpoint, and appends a ledger line per step in the
// sleep task's format ("ID ATTEMPT ELAPSED_MS UNIX_NANO"), so the ledger
// invariants (one active attempt per task, all work done, keys) cover it.
const execProgram = `#!/bin/sh
set -eu
spec=$(cat)
ledger=$(printf '%s' "$spec" | sed -n 's/.*"ledger":"\([^"]*\)".*/\1/p')
[ -n "$ledger" ] || { echo "spec needs \"ledger\"" >&2; exit 65; }
i=0
[ -z "${TASKD_CHECKPOINT_FILE:-}" ] || i=$(cat "$TASKD_CHECKPOINT_FILE")
while [ "$i" -lt 20 ]; do
  sleep 0.3
  i=$((i + 1))
  echo "$TASKD_TASK_ID $TASKD_ATTEMPT $((i * 300)) $(date +%s%N)" >> "$ledger"
  printf '{"progress":{"done":%d,"total":20},"checkpoint":"%d"}\n' "$i" "$i" >&3
done
`

// installExec writes the program into DIR/types.d (root-owned, 0755, as
// taskd requires) and returns the directory for --exec-dir.
func installExec(dir string) (string, error) {
	types := filepath.Join(dir, "types.d")
	if err := os.MkdirAll(types, 0o755); err != nil {
		return "", fmt.Errorf("exec dir: %w", err)
	}
	if err := os.Chmod(types, 0o755); err != nil {
		return "", fmt.Errorf("exec dir: %w", err)
	}
	prog := filepath.Join(types, execType)
	if err := os.WriteFile(prog, []byte(execProgram), 0o755); err != nil {
		return "", fmt.Errorf("exec program: %w", err)
	}
	if err := os.Chmod(prog, 0o755); err != nil { // whatever the umask
		return "", fmt.Errorf("exec program: %w", err)
	}
	return types, nil
}
