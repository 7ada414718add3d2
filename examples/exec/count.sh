#!/bin/sh
# An exec task type in shell (docs/task-types.md): counts to the spec's
# "to", one step per "step_ms" milliseconds, checkpointing after every
# step, and resumes from its checkpoint. Install as /etc/taskd/types.d/count
# (owned by root, mode 0755). With "ledger" in the spec it appends
# "ATTEMPT STEP NANOS" per step to that file (the end-to-end test reads it).
set -eu
spec=$(cat)
field() { printf '%s' "$spec" | sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\{0,1\}\([^\",}]*\).*/\1/p"; }
to=$(field to); step_ms=$(field step_ms); ledger=$(field ledger)
case "$to" in ''|*[!0-9]*) echo "spec needs \"to\": a whole number" >&2; exit 65;; esac
[ -n "$step_ms" ] || step_ms=100
i=0
if [ -n "${TASKD_CHECKPOINT_FILE:-}" ]; then i=$(cat "$TASKD_CHECKPOINT_FILE"); fi
trap 'exit 0' TERM   # every step is checkpointed: nothing to save
while [ "$i" -lt "$to" ]; do
  sleep "$(awk "BEGIN { print $step_ms / 1000 }")"
  i=$((i + 1))
  [ -z "$ledger" ] || echo "$TASKD_ATTEMPT $i $(date +%s%N)" >> "$ledger"
  printf '{"progress":{"done":%d,"total":%d},"checkpoint":"%d"}\n' "$i" "$to" "$i" >&3
done
printf '{"log":"counted to %d"}\n' "$to" >&3
