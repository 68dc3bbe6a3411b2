"""The systemd units shadowfs ships, rendered for one installation.

One job: the text of `shadowfs.service` (the daemon), `shadowfs-snapshot.service`
and `shadowfs-snapshot.timer` (snapper's timeline: a set on a schedule, then
a prune of the timeline's own sets), for a given interpreter, state directory
and schedule. Writing and enabling them is `systemd_cmd`'s job.

Invariants:
- `shadowfs.service` is `Type=notify`: systemd counts it started when every
  volume is protected and the browser serves them (READY=1, design §9.4).
- `KillMode=process`: stopping the daemon stops only the daemon. Its mount
  processes keep the live mounts up and the next daemon takes them over
  (design §9); killing them with the daemon would cut every application off
  its files. `shadowfs stop --unprotect` is the way to take protection down.
- The timer's sets carry the label `timeline` and its prune is limited to that
  label: sets a person or a backup job made are never pruned by the timer.
- Every value put into a unit line is quoted for systemd, so a path with
  spaces stays one argument.
"""

from __future__ import annotations

import dataclasses

TIMELINE_LABEL = "timeline"
DAEMON_UNIT = "shadowfs.service"
SNAPSHOT_UNIT = "shadowfs-snapshot.service"
TIMER_UNIT = "shadowfs-snapshot.timer"


@dataclasses.dataclass(frozen=True)
class Installation:
    """What the units are rendered for."""

    command: list[str]          # how to run shadowfs, e.g. [python, "-m", "shadowfs"]
    state: str                  # the state directory
    mount_root: str | None      # where snapshots/ is mounted (None: the daemon's default)
    log_level: str = "info"
    volumes: list[str] = dataclasses.field(default_factory=list)  # the timer's; empty: every volume
    on_calendar: str = "hourly"
    keep: dict[str, int] = dataclasses.field(default_factory=lambda: {
        "hourly": 24, "daily": 7, "weekly": 4, "monthly": 6})


def quote(argument: str) -> str:
    """`argument` as one word of a systemd command line (its quoting is close to the shell's; `%`
    and `$` would be expanded by systemd, so they are escaped as it wants)."""
    text = argument.replace("%", "%%").replace("$", "$$")
    if text and all(c.isalnum() or c in "/._-+=:,@" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def command_line(installation: Installation, *words: str) -> str:
    return " ".join(quote(w) for w in [*installation.command, *words])


def daemon_unit(installation: Installation) -> str:
    words = ["daemon", "--state", installation.state, "--log-level", installation.log_level]
    if installation.mount_root is not None:
        words += ["--mount-root", installation.mount_root]
    return f"""[Unit]
Description=shadowfs: snapshot sets of protected directory trees
After=local-fs.target
RequiresMountsFor={quote(installation.state)}

[Service]
Type=notify
ExecStart={command_line(installation, *words)}
# only the daemon stops: the mount processes keep the live mounts, the next daemon takes them over
KillMode=process
Restart=on-failure
RestartSec=2
TimeoutStartSec=300
TimeoutStopSec=120

[Install]
WantedBy=multi-user.target
"""


def snapshot_unit(installation: Installation) -> str:
    targets = installation.volumes or ["--all"]
    keep = [w for rule, count in installation.keep.items() if count for w in (f"--keep-{rule}", str(count))]
    create = command_line(installation, "snapshot", "create", "--state", installation.state,
                          "--label", TIMELINE_LABEL, *targets)
    prune = command_line(installation, "snapshot", "prune", "--state", installation.state,
                         "--label", TIMELINE_LABEL, *keep)
    return f"""[Unit]
Description=shadowfs: take a timeline snapshot set, then prune the timeline's old sets
Requires={DAEMON_UNIT}
After={DAEMON_UNIT}

[Service]
Type=oneshot
ExecStart={create}
ExecStart={prune}
"""


def timer_unit(installation: Installation) -> str:
    return f"""[Unit]
Description=shadowfs: timeline snapshot sets ({installation.on_calendar})

[Timer]
OnCalendar={installation.on_calendar}
Persistent=true
RandomizedDelaySec=30

[Install]
WantedBy=timers.target
"""


def render(installation: Installation) -> dict[str, str]:
    """File name -> text of every unit."""
    if not installation.keep or not any(installation.keep.values()):
        raise ValueError("the timeline needs at least one --keep-* rule, or it would prune every set")
    return {DAEMON_UNIT: daemon_unit(installation), SNAPSHOT_UNIT: snapshot_unit(installation),
            TIMER_UNIT: timer_unit(installation)}


__all__ = ["DAEMON_UNIT", "SNAPSHOT_UNIT", "TIMELINE_LABEL", "TIMER_UNIT", "Installation", "quote", "render"]
