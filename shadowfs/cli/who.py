"""Who made a change, as `shadowfs diff` and `shadowfs blame` show it (design §3.14).

One job: complete an author's JSON fields (`diffarea.provenance.author_fields`)
with the user and group names of its ids, and say it in one short phrase for
plain-text output.

Invariants:
- A name is added only when this machine resolves the id (the passwd and
  group databases, looked up once per id); an id without one keeps no
  ``user`` or ``group`` field rather than a guess.
- The phrase names only what is known: `by alice (1000:1000) dd[4242] at
  2026-12-04 03:00:01Z`, without the parts an author lacks.
"""

from __future__ import annotations

import functools
import grp
import pwd
from typing import Any


@functools.cache
def _user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


@functools.cache
def _group(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return None


def with_names(who: dict[str, Any]) -> dict[str, Any]:
    """`who` with "user" and "group" added where the uid and gid have names here."""
    named = dict(who)
    user, group = _user(who["uid"]), _group(who["gid"])
    if user is not None:
        named["user"] = user
    if group is not None:
        named["group"] = group
    return named


def name_items(items: list[dict[str, Any]]) -> None:
    """Add the names to the "who" and "modified_by" of every item, in place."""
    for item in items:
        for key in ("who", "modified_by"):
            if key in item:
                item[key] = with_names(item[key])


def phrase(who: dict[str, Any]) -> str:
    """`who` in a few words: user (uid:gid), command[pid], time to the second."""
    user = f"{who['user']} " if "user" in who else ""
    command = f"{who.get('comm', '?')}[{who['pid']}]"
    when = who["time"][:19].replace("T", " ") + "Z"
    return f"by {user}({who['uid']}:{who['gid']}) {command} at {when}"
