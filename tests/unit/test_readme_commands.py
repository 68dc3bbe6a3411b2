"""Every `shadowfs` command the README shows parses as written: its subcommands and options exist
(placeholders such as `<set id>` stand for a made-up id). What a command then does is the other
tests' job; this keeps the README from showing commands that are gone or misspelt."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from shadowfs.cli.main import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"
PLACEHOLDER = re.compile(r"<[^<>]+>")
SOME_ID = "3f2b8a52-5f8e-4a55-9a4c-0d3f8e0b7c11"


def shown_commands() -> list[str]:
    commands: list[str] = []
    in_shell = False
    pending = ""
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_shell = line.strip() == "```sh"
            continue
        if not in_shell:
            continue
        text = pending + line.split(" #")[0].strip() if pending else line.split("  #")[0].strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if text.startswith("shadowfs "):
            commands.append(re.split(r"\s(?:>>?|\|)\s", text)[0].rstrip("&").strip())  # not a redirection
    return commands


def test_the_readme_shows_commands() -> None:
    assert len(shown_commands()) >= 30


@pytest.mark.parametrize("command", shown_commands())
def test_each_shown_command_parses(command: str) -> None:
    words = shlex.split(PLACEHOLDER.sub(SOME_ID, command))[1:]
    try:
        build_parser().parse_args(words)
    except SystemExit as exc:
        pytest.fail(f"README shows `{command}`, which the CLI refuses (exit {exc.code})")
