#!/usr/bin/env python3
"""An exec task type in Python (docs/task-types.md): counts to spec["to"],
checkpointing after every step, and resumes from its checkpoint. Install
as /etc/taskd/types.d/count-py (owned by root, mode 0755)."""
import json
import os
import signal
import sys
import time

spec = json.load(sys.stdin)
to = spec.get("to")
if not isinstance(to, int) or to < 0:
    print('spec needs "to": a whole number', file=sys.stderr)
    sys.exit(65)  # permanent: retrying cannot help
step = spec.get("step_ms", 100) / 1000
proto = os.fdopen(int(os.environ.get("TASKD_PROTOCOL_FD", "3")), "w", buffering=1)
i = 0
if "TASKD_CHECKPOINT_FILE" in os.environ:
    with open(os.environ["TASKD_CHECKPOINT_FILE"]) as f:
        i = int(f.read())
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # every step is checkpointed
while i < to:
    time.sleep(step)
    i += 1
    proto.write(json.dumps({"progress": {"done": i, "total": to}, "checkpoint": str(i)}) + "\n")
proto.write(json.dumps({"log": f"counted to {to}"}) + "\n")
