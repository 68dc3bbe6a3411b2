"""`shadowfs systemd install | uninstall | print`: the daemon as a systemd service, with a timeline.

One job: write (or remove, or print) the units `systemd_units` renders for this
installation: the daemon (`shadowfs.service`, Type=notify) and a timer that
takes a labelled set on a schedule and prunes that label's old sets. With the
default unit directory and a running systemd, `install` reloads systemd and,
with `--enable`, starts both; elsewhere (an image, a test) it only writes.

Invariants:
- Nothing is written unless every unit rendered and the schedule is one
  `systemd-analyze calendar` accepts (when systemd-analyze is there): a bad
  `--on-calendar` is a `CliError` naming it, and no file changes.
- Units are replaced atomically; `uninstall` removes only the three files
  this command writes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

from shadowfs import logsetup, statedir
from shadowfs.cli import systemd_units
from shadowfs.cli.common import add_command, add_group
from shadowfs.errors import CliError
from shadowfs.linux.atomicfile import write_atomic

if TYPE_CHECKING:
    from shadowfs.cli.common import Subcommands

UNIT_DIR = "/etc/systemd/system"
KEEP_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def installation_of(args: argparse.Namespace) -> systemd_units.Installation:
    state = os.path.abspath(statedir.resolve_state_dir(getattr(args, "state", None)))
    keep = {rule: getattr(args, f"keep_{rule}") for rule in KEEP_RULES if getattr(args, f"keep_{rule}")}
    defaults = systemd_units.Installation(command=[], state=state, mount_root=None)
    return systemd_units.Installation(
        command=[sys.executable, "-m", "shadowfs"], state=state,
        mount_root=os.path.abspath(args.mount_root) if args.mount_root else None,
        log_level=args.log_level,
        volumes=[statedir.validate_volume_name(v) for v in args.volume or []],
        on_calendar=args.on_calendar, keep=keep or defaults.keep)


def check_calendar(spec: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    result = subprocess.run([analyze, "calendar", spec], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CliError(f"--on-calendar {spec!r} is not a systemd calendar spec: "
                       f"{result.stderr.strip() or result.stdout.strip()}")


def systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system") and shutil.which("systemctl") is not None


def cmd_systemd_print(args: argparse.Namespace) -> int:
    for name, text in rendered(args).items():
        print(f"# {name}\n{text}")
    return 0


def rendered(args: argparse.Namespace) -> dict[str, str]:
    installation = installation_of(args)
    check_calendar(installation.on_calendar)
    try:
        return systemd_units.render(installation)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def cmd_systemd_install(args: argparse.Namespace) -> int:
    units = rendered(args)
    os.makedirs(args.dir, exist_ok=True)
    for name, text in units.items():
        write_atomic(os.path.join(args.dir, name), text.encode(), mode=0o644)
        print(f"wrote {os.path.join(args.dir, name)}")
    live = os.path.abspath(args.dir) == UNIT_DIR and systemd_running()
    if live:
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        if args.enable:
            subprocess.run(["systemctl", "enable", "--now", systemd_units.DAEMON_UNIT,
                            systemd_units.TIMER_UNIT], check=True)
            return 0
    print(f"start them with: systemctl enable --now {systemd_units.DAEMON_UNIT} {systemd_units.TIMER_UNIT}"
          if live or os.path.abspath(args.dir) == UNIT_DIR else
          f"(not the system's unit directory {UNIT_DIR}: systemd was not told)")
    return 0


def cmd_systemd_uninstall(args: argparse.Namespace) -> int:
    live = os.path.abspath(args.dir) == UNIT_DIR and systemd_running()
    if live:
        subprocess.run(["systemctl", "disable", "--now", systemd_units.TIMER_UNIT,
                        systemd_units.DAEMON_UNIT], check=False)
    for name in (systemd_units.TIMER_UNIT, systemd_units.SNAPSHOT_UNIT, systemd_units.DAEMON_UNIT):
        path = os.path.join(args.dir, name)
        try:
            os.unlink(path)
            print(f"removed {path}")
        except FileNotFoundError:
            pass
    if live:
        subprocess.run(["systemctl", "daemon-reload"], check=True)
    return 0


def _unit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mount-root", metavar="DIR", help="where the daemon mounts snapshots/")
    parser.add_argument("--log-level", choices=logsetup.LEVELS, default="info",
                        help="the daemon's log level (default: info)")
    parser.add_argument("--volume", action="append", metavar="NAME",
                        help="a volume the timer snapshots (repeat it; default: every protected volume)")
    parser.add_argument("--on-calendar", default="hourly", metavar="SPEC",
                        help="when the timer takes a set (systemd.time(7); default: hourly)")
    for rule in KEEP_RULES:
        parser.add_argument(f"--keep-{rule}", type=int, default=0, metavar="N",
                            help=f"the timer's prune keeps N {rule} sets (snapshot prune's rules; with "
                                 f"no --keep-* given: 24 hourly, 7 daily, 4 weekly, 6 monthly)")


def add_parser(commands: Subcommands) -> None:
    group = add_group(commands, "systemd", "run the daemon under systemd, with timeline snapshots",
                      "systemd_command")
    install = add_command(group, "install", cmd_systemd_install,
                          "write shadowfs.service and the timeline timer (and reload systemd)")
    install.add_argument("--dir", default=UNIT_DIR, help=f"where the units go (default: {UNIT_DIR})")
    install.add_argument("--enable", action="store_true",
                         help="also enable and start the daemon and the timer")
    _unit_options(install)
    show = add_command(group, "print", cmd_systemd_print, "print the units install would write")
    _unit_options(show)
    remove = add_command(group, "uninstall", cmd_systemd_uninstall,
                         "stop, disable and remove the units install wrote")
    remove.add_argument("--dir", default=UNIT_DIR, help=f"where the units are (default: {UNIT_DIR})")
