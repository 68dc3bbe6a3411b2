"""File sets (shadowfs.fileset) against an independent brute-force model, on random trees and specs.

The model is written the other way round: for every path that could be recorded, it looks for the
first (component, spec) that can produce it, and matches names with regular expressions instead of
the greedy wildcard matcher.
"""

from __future__ import annotations

import random
import re

import pytest

from shadowfs.backup.fileset import ComponentFiles, FileSets, Selected, Spec, build_file_sets, spec_covers

NAMES = ["a.db", "b.db", "a.log", "README", "x1y", "ab", "a", "data.db.bak", ".hidden", "q?", "st*r", "é.db"]
PATTERNS = ["*", "*.*", "*.db", "a?", "?b*", "x*y", "*.log", "README", "a", "*.db.*", "q?", "st*r", "*b",
            "??"]


def model_match(pattern: str, name: str) -> bool:
    if pattern == "*.*":
        return True
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


def model_covers(spec_path: str, pattern: str, recursive: bool, path: str) -> bool:
    base = spec_path.rstrip("/") or "/"
    parent, name = path.rsplit("/", 1)
    parent = parent or "/"
    inside = parent == base or (recursive and (base == "/" or parent.startswith(base + "/")))
    return inside and model_match(pattern, name)


def model(objects: list[tuple[str, bool]], components: list[ComponentFiles],
          excluded: list[Spec]) -> FileSets:
    files = {p for p, is_dir in objects if not is_dir}
    out_excluded = {p for p in files
                    if any(model_covers(e.path, e.filespec, e.recursive, p) for e in excluded)}
    order = [(ci, si, spec) for ci, comp in enumerate(components) for si, spec in enumerate(comp.specs)]
    possible = set(files)
    for _, _, spec in order:
        if spec.alternate_path:
            alt = spec.alternate_path.rstrip("/") or "/"
            for source in files:
                if model_covers(alt, spec.filespec, spec.recursive, source):
                    possible.add((spec.path.rstrip("/") or "/").rstrip("/") + source[len(alt):])
    claims: dict[str, tuple[int, str]] = {}
    for recorded in possible:
        for ci, _, spec in order:
            base = spec.path.rstrip("/") or "/"
            if not spec.alternate_path:
                if recorded in files and recorded not in out_excluded \
                        and model_covers(base, spec.filespec, spec.recursive, recorded):
                    claims[recorded] = (ci, recorded)
                    break
                continue
            alt = spec.alternate_path.rstrip("/") or "/"
            prefix = base.rstrip("/") + "/"
            if not recorded.startswith(prefix):
                continue
            source = alt.rstrip("/") + "/" + recorded[len(prefix):]
            if source in files and source not in out_excluded and recorded not in out_excluded \
                    and not any(model_covers(e.path, e.filespec, e.recursive, recorded) for e in excluded) \
                    and model_covers(alt, spec.filespec, spec.recursive, source):
                claims[recorded] = (ci, source)
                break
    result = FileSets()
    for ci, comp in enumerate(components):
        result.writers[comp.key] = comp.writer
        result.components[comp.key] = sorted((Selected(r, src) for r, (c, src) in claims.items() if c == ci),
                                             key=lambda s: s.path)
    consumed = {src for r, (_, src) in claims.items() if src != r}
    shadowed = {p for p in files if p not in claims and p not in out_excluded
                and any(spec.alternate_path and model_covers(spec.path, spec.filespec, spec.recursive, p)
                        for _, _, spec in order)}
    taken = set(claims) | consumed | shadowed | out_excluded
    result.excluded = sorted(out_excluded)
    result.outside = sorted(p for p, _ in objects if p not in taken)
    return result


def random_tree(rng: random.Random) -> tuple[list[tuple[str, bool]], list[str]]:
    dirs = ["/v"]
    objects = [("/v", True)]
    for _ in range(rng.randrange(3, 9)):
        parent = rng.choice(dirs)
        new = f"{parent}/{rng.choice(['d', 'db', 'alt', 'logs', 'x'])}{len(dirs)}"
        dirs.append(new)
        objects.append((new, True))
    for d in dirs:
        for name in rng.sample(NAMES, rng.randrange(0, 6)):
            objects.append((f"{d}/{name}", False))
    return objects, dirs


def random_spec(rng: random.Random, dirs: list[str], alternate: bool) -> Spec:
    path = rng.choice(dirs + ["/v/missing", "/"])
    return Spec(path + ("/" if rng.random() < 0.1 else ""), rng.choice(PATTERNS), rng.random() < 0.5,
                rng.choice(dirs) if alternate and rng.random() < 0.3 else "")


@pytest.mark.parametrize("seed", range(300))
def test_file_sets_match_model(seed: int) -> None:
    rng = random.Random(seed)
    objects, dirs = random_tree(rng)
    components = [ComponentFiles(f"w{i}\\comp{i}", f"w{i % 2}",
                                 tuple(random_spec(rng, dirs, True) for _ in range(rng.randrange(1, 4))))
                  for i in range(rng.randrange(0, 4))]
    excluded = [random_spec(rng, dirs, False) for _ in range(rng.randrange(0, 3))]
    assert build_file_sets(objects, components, excluded) == model(objects, components, excluded)


def test_wildcards_and_recursion() -> None:
    assert spec_covers("/v", "*.*", False, "/v/README")
    assert spec_covers("/v/", "*.db", False, "/v/a.db")
    assert not spec_covers("/v", "*.db", False, "/v/sub/a.db")
    assert spec_covers("/v", "*.db", True, "/v/sub/deeper/a.db")
    assert not spec_covers("/v", "*.db", True, "/vx/a.db")
    assert spec_covers("/", "a?", True, "/anywhere/ab")
    assert not spec_covers("/v", "a?", False, "/v/abc")


def test_exclusions_win_and_alternates() -> None:
    objects = [("/v", True), ("/v/db", True), ("/v/db/x.db", False), ("/v/db/x.tmp", False),
               ("/v/stage", True), ("/v/stage/x.db", False), ("/v/other", False)]
    comp = ComponentFiles("w\\db", "w", (Spec("/v/db", "*.db", False, "/v/stage"), Spec("/v/db", "*", False)))
    sets = build_file_sets(objects, [comp], [Spec("/v/db", "*.tmp")])
    assert sets.components["w\\db"] == [Selected("/v/db/x.db", "/v/stage/x.db")]
    assert sets.excluded == ["/v/db/x.tmp"]
    assert sets.outside == ["/v", "/v/db", "/v/other", "/v/stage"]
