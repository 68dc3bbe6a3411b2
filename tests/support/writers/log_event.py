"""The event command of the test express writers: append what the command was run with to a log.

    python log_event.py LOG [COMMAND]

One JSON line per run: {"event": $SHADOWFS_EVENT, "command": COMMAND (whose command this is),
"t", "pid", "pgid", "sid", "uid", "env": every SHADOWFS_* variable}. Run as a script (by path),
with the standard library only: an express writer runs its commands in / with whatever Python
path the writer had.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    command = sys.argv[2] if len(sys.argv) > 2 else ""
    record = {"event": os.environ.get("SHADOWFS_EVENT", ""), "command": command,
              "t": time.time(), "pid": os.getpid(), "pgid": os.getpgid(0), "sid": os.getsid(0),
              "uid": os.getuid(), "env": {k: v for k, v in os.environ.items() if k.startswith("SHADOWFS_")}}
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
