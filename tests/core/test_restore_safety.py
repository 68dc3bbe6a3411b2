"""The malicious-restore corpus: whatever the media or the target contain, 0 writes outside the target.

Each case crafts images (records written as given, or raw manifest lines) and/or plants things in
the target before or during the restore (a progress hook plays a concurrent attacker). A sentinel
tree outside the target — files, a directory, symlinks, a file the attacker hard-links into the
target — must be byte- and metadata-identical afterwards, and nothing may appear next to it. Cases
marked "refused" must fail before the target is even created.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shadowfs.manifest import manifest
from shadowfs.media import ImageInfo, ImageWriter, MediaError, Record, layout
from shadowfs.restore.engine import restore

FILE, DIR, LNK = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777


def d(path: str, **kw: Any) -> Record:
    return Record("put", "vol", path, "dir", DIR, **kw)


def f(path: str, data: bytes = b"payload", **kw: Any) -> tuple[Record, bytes]:
    return Record("put", "vol", path, "file", FILE, size=kw.pop("size", len(data)), **kw), data


def s(path: str, target: str) -> Record:
    return Record("put", "vol", path, "symlink", LNK, size=len(target), target=target)


def link(path: str, leader: str) -> Record:
    return Record("put", "vol", path, "file", FILE, link=leader)


def rm(path: str) -> Record:
    return Record("delete", "vol", path)


Item = Record | tuple[Record, bytes] | bytes  # bytes: a raw manifest line


def make_image(store: str, items: list[Item], kind: str = "full", chain: list[str] | None = None,
               how: str = "full", extents: list[tuple[int, int]] | None = None) -> str:
    chain = chain or []
    info = ImageInfo(id=layout.new_image_id(), created=f"2026-01-01T00:00:{len(chain):02d}.000000Z",
                     type=kind, volumes=[{"name": "vol", "source": "/x"}], base=chain[-1] if chain else None,
                     chain=chain)
    with ImageWriter(store, info) as writer:
        for item in items:
            if isinstance(item, bytes):
                os.write(writer._manifest_fd, item + b"\n")
                writer.records += 1
                continue
            if isinstance(item, tuple):
                record, data = item
                record = dataclasses.replace(record)
                ref = writer.add_blob([data], how)
                ref.extents = list(extents) if extents is not None else ([(0, len(data))] if data else [])
                record.data = ref
            else:
                record = item
            writer.add_record(record)
        return writer.commit()


ROOT = d("")
GOOD_FILE = f("f", b"good content")


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret").write_bytes(b"do not touch")
    (outside / "dir" / "x").write_bytes(b"inner")
    os.setxattr(outside / "secret", "user.keep", b"1")
    os.symlink("secret", outside / "alias")
    os.link(outside / "secret", tmp_path / "spare-link")  # the attacker's extra name for the secret
    return {"tmp": tmp_path, "outside": str(outside), "store": str(tmp_path / "media"),
            "target": str(tmp_path / "target")}


def sentinel(world: dict[str, Any], with_ctime: bool = True) -> dict[str, Any]:
    result = manifest(world["outside"], with_ctime=with_ctime)
    if not with_ctime:  # a planted hard link changes the secret's link count and ctime: nothing else
        result = {k: v[:7] + v[8:] for k, v in result.items()}
    return result


def run_case(world: dict[str, Any], images: list[list[Item]], refused: bool,
             plant: Callable[[str], None] | None = None,
             during: Callable[[dict[str, Any]], None] | None = None,
             kinds: list[str] | None = None, hows: list[str] | None = None,
             extents: list[tuple[int, int]] | None = None) -> Exception | None:
    store, target = world["store"], world["target"]
    ids: list[str] = []
    for n, items in enumerate(images):
        kind = (kinds or ["full"] + ["incremental"] * 5)[n]
        last = n == len(images) - 1
        how = (hows or ["full"] * 6)[n]
        ids.append(make_image(store, items, kind, list(ids), how, extents if last else None))
    if plant is not None:
        os.makedirs(os.path.join(target, "vol"), exist_ok=True)
        plant(os.path.join(target, "vol"))
    strict = plant is None and during is None  # a planted hard link changes only the secret's nlink and ctime
    before = sentinel(world, with_ctime=strict)
    listing = sorted(os.listdir(world["tmp"]))
    error: Exception | None = None
    try:
        restore(store, ids[-1], target, progress=during)
    except MediaError as exc:
        error = exc
    assert sentinel(world, with_ctime=strict) == before
    assert sorted(os.listdir(world["tmp"])) == listing or not refused
    if refused:
        assert error is not None, "the restore should have been refused"
        assert plant is not None or not os.path.exists(target), "refused, but the target was written"
    return error


REFUSED: dict[str, list[list[Item]]] = {
    "dotdot": [[ROOT, f("../escape")]],
    "dotdot-inside": [[ROOT, d("a"), f("a/../../escape")]],
    "absolute": [[ROOT, f("/tmp/escape")]],
    "nul": [[ROOT, f("a\0b")]],
    "empty-component": [[ROOT, d("a"), f("a//b")]],
    "dot-component": [[ROOT, f("./a")]],
    "trailing-dot": [[ROOT, d("a"), f("a/.")]],
    "only-dotdot": [[ROOT, f("..")]],
    "symlink-then-child": [[ROOT, s("a", "/outside"), f("a/x")]],
    "symlink-then-dir": [[ROOT, s("a", "../../outside"), d("a/b")]],
    "symlink-chain": [[ROOT, s("s1", "s2"), s("s2", "/"), f("s1/x")]],
    "symlink-then-same-name-file": [[ROOT, s("f", "/etc/passwd"), f("f")]],
    "hardlink-dotdot": [[ROOT, link("ln", "../outside/secret")]],
    "hardlink-absolute": [[ROOT, link("ln", "/etc/passwd")]],
    "hardlink-to-symlink": [[ROOT, s("sym", "/etc/passwd"), link("ln", "sym")]],
    "hardlink-to-dir": [[ROOT, d("dd"), link("ln", "dd")]],
    "hardlink-to-later": [[ROOT, link("ln", "zz"), f("zz")]],
    "volume-dotdot": [[ROOT, dataclasses.replace(d("x"), volume="..")]],
    "volume-absolute": [[ROOT, dataclasses.replace(d("x"), volume="/abs")]],
    "long-name": [[ROOT, f("n" * 256)]],
    "no-root": [[d("a")]],
    "delete-root": [[ROOT], [rm("")]],
    "patch-over-symlink": [[ROOT, s("f", "/etc/passwd")],
                           [dataclasses.replace(f("f", b"x")[0], data=None), ]],
    "keep-missing": [[ROOT], [b'{"op":"put","volume":"vol","path":"nothere","kind":"file","mode":33188,'
                              b'"uid":0,"gid":0,"size":0,"atime_ns":0,"mtime_ns":0,"ctime_ns":0,"nlink":1,'
                              b'"rdev":0,"ino":1,"xattrs":{},"target":null,"link":null,"data":{"how":"keep"}}']],
    "ref-outside-chain": [[ROOT, b'{"op":"put","volume":"vol","path":"r","kind":"file","mode":33188,"uid":0,'
                                b'"gid":0,"size":1,"atime_ns":0,"mtime_ns":0,"ctime_ns":0,"nlink":1,"rdev":0,'
                                b'"ino":1,"xattrs":{},"target":null,"link":null,"data":{"how":"ref",'
                                b'"image":"other","extents":[[0,1]],"pack":0,"offset":0,"length":1,'
                                b'"sha256":"' + b"0" * 64 + b'"}}']],
    "mode-mismatch": [[ROOT, dataclasses.replace(d("x"), mode=LNK)]],
    "xattr-nul-name": [[ROOT, dataclasses.replace(d("x"), xattrs={"user.a\0b": b"1"})]],
    "xattr-no-namespace": [[ROOT, dataclasses.replace(d("x"), xattrs={"plain": b"1"})]],
    "symlink-target-nul": [[ROOT, s("l", "a\0/etc")]],
    "uid-too-big": [[ROOT, dataclasses.replace(d("x"), uid=1 << 40)]],
    "negative-size": [[ROOT, b'{"op":"put","volume":"vol","path":"n","kind":"dir","mode":16877,"uid":0,'
                             b'"gid":0,"size":-5,"atime_ns":0,"mtime_ns":0,"ctime_ns":0,"nlink":1,"rdev":0,'
                             b'"ino":1,"xattrs":{},"target":null,"link":null}']],
    "truncated-line": [[ROOT, b'{"op":"put","volume":"vol","path":"t"']],
    "duplicate-path": [[ROOT, d("a"), d("a")]],
    "kind-change-without-delete": [[ROOT, d("a")], [GOOD_FILE[0]]],
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_before_writing(world: dict[str, Any], case: str) -> None:
    images = REFUSED[case]
    if case == "kind-change-without-delete":
        images = [[ROOT, d("f")], [GOOD_FILE]]
    run_case(world, images, refused=True)


@pytest.mark.parametrize("extents, size", [
    ([(0, 4), (2, 4)], 10),          # overlapping
    ([(0, 4), (8, 4)], 10),          # beyond the end of the file
    ([((1 << 64) - 2, 4)], 10),      # past 2**64
    ([(0, 3)], 10),                  # blob of 8 bytes, extents cover 3
    ([(0, 0)], 10),                  # zero length
])
def test_bad_ranges_refused(world: dict[str, Any], extents: list[tuple[int, int]], size: int) -> None:
    run_case(world, [[ROOT, f("r", b"8 bytes!", size=size)]], refused=True, extents=extents)


def test_patch_ranges_beyond_file_refused(world: dict[str, Any]) -> None:
    patch = f("f", b"zz", size=4)
    run_case(world, [[ROOT, GOOD_FILE], [patch]], refused=True, hows=["full", "patch"], extents=[(3, 2)])


# ---- the target already holds traps --------------------------------------------------------------


def test_volume_dir_is_symlink_to_outside(world: dict[str, Any]) -> None:
    os.makedirs(world["target"])
    os.symlink(world["outside"], os.path.join(world["target"], "vol"))
    run_case(world, [[ROOT, d("dir"), f("dir/x", b"new"), GOOD_FILE]], refused=False)
    assert os.path.isdir(os.path.join(world["target"], "vol", "dir"))
    assert not os.path.islink(os.path.join(world["target"], "vol"))


def sym(name: str, target: str) -> Callable[[str, str], None]:
    """Plant a symlink `name` in the volume; "{out}" in `target` is the sentinel directory."""
    return lambda vol, out: os.symlink(target.format(out=out), os.path.join(vol, name))


PLANTS: dict[str, tuple[Callable[[str, str], None], list[list[Item]]]] = {
    "symlink-dir-in-the-way": (sym("dir", "{out}/dir"), [[ROOT, d("dir"), f("dir/x", b"mine")]]),
    "symlink-file-in-the-way": (sym("f", "{out}/secret"), [[ROOT, GOOD_FILE]]),
    "relative-symlink-in-the-way": (sym("f", "../../outside/secret"), [[ROOT, GOOD_FILE]]),
    "hardlink-in-the-way": (lambda vol, out: os.link(os.path.join(out, "secret"), os.path.join(vol, "f")),
                            [[ROOT, GOOD_FILE]]),
    "fifo-in-the-way": (lambda vol, out: os.mkfifo(os.path.join(vol, "f")), [[ROOT, GOOD_FILE]]),
    "file-where-dir-goes": (lambda vol, out: Path(vol, "dir").write_bytes(b"x"),
                            [[ROOT, d("dir"), f("dir/x")]]),
    "symlink-where-link-goes": (sym("l2", "{out}/secret"), [[ROOT, GOOD_FILE, link("l2", "f")]]),
    "symlink-for-special": (sym("p", "{out}/secret"),
                            [[ROOT, Record("put", "vol", "p", "fifo", stat.S_IFIFO | 0o600)]]),
    "symlink-for-symlink": (sym("l", "{out}/secret"), [[ROOT, s("l", "elsewhere")]]),
    "deep-symlink-chain": (lambda vol, out: (sym("a", "b")(vol, out), sym("b", "{out}")(vol, out)),
                           [[ROOT, d("a"), f("a/secret", b"overwrite?")]]),
    "delete-through-symlink": (sym("dir", "{out}/dir"), [[ROOT, d("dir"), f("dir/x")], [rm("dir/x")]]),
}


@pytest.mark.parametrize("case", sorted(PLANTS))
def test_planted_in_target(world: dict[str, Any], case: str) -> None:
    plant, images = PLANTS[case]
    run_case(world, images, refused=False, plant=lambda vol: plant(vol, world["outside"]))
    vol = os.path.join(world["target"], "vol")
    assert not any(os.path.islink(os.path.join(vol, n)) for n in ("dir", "f", "l2", "p", "a"))


def test_partial_into_planted_hardlink(world: dict[str, Any]) -> None:
    partial = f("f", b"XX", size=12)
    partial[0].partial = [(0, 2)]
    run_case(world, [[ROOT, partial]], refused=False,
             plant=lambda vol: os.link(os.path.join(world["outside"], "secret"), os.path.join(vol, "f")))
    assert Path(world["target"], "vol", "f").read_bytes() == b"XX not touch"


def test_partial_into_planted_symlink(world: dict[str, Any]) -> None:
    partial = f("f", b"XX", size=2)
    partial[0].partial = [(0, 2)]
    run_case(world, [[ROOT, partial]], refused=False,
             plant=lambda vol: os.symlink(os.path.join(world["outside"], "secret"), os.path.join(vol, "f")))
    assert Path(world["target"], "vol", "f").read_bytes() == b"XX"


# ---- a concurrent attacker changes the target during the restore --------------------------------


def _attacker(world: dict[str, Any], trigger: str,
              act: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    state = {"done": False}

    def hook(progress: dict[str, Any]) -> None:
        if not state["done"] and progress["path"] == trigger:
            state["done"] = True
            act(os.path.join(world["target"], "vol"))
    return hook


def _swap_for_spare(world: dict[str, Any], name: str) -> Callable[[str], None]:
    def act(vol: str) -> None:
        os.unlink(os.path.join(vol, name))
        os.link(os.path.join(world["tmp"], "spare-link"), os.path.join(vol, name))
    return act


def test_keep_after_hardlink_swapped_in(world: dict[str, Any]) -> None:
    line = (b'{"op":"put","volume":"vol","path":"f","kind":"file","mode":33279,"uid":4321,"gid":0,"size":12,'
            b'"atime_ns":0,"mtime_ns":0,"ctime_ns":0,"nlink":1,"rdev":0,"ino":1,"xattrs":{},"target":null,'
            b'"link":null,"data":{"how":"keep"}}')
    run_case(world, [[ROOT, GOOD_FILE], [line]], refused=False,
             during=_attacker(world, "vol:f", _swap_for_spare(world, "f")))
    assert os.stat(os.path.join(world["outside"], "secret")).st_uid == 0


def test_patch_after_hardlink_swapped_in(world: dict[str, Any]) -> None:
    patch = f("f", b"PATCH", size=12)
    run_case(world, [[ROOT, GOOD_FILE], [patch]], refused=False, hows=["full", "patch"], extents=[(0, 5)],
             during=_attacker(world, "vol:f", _swap_for_spare(world, "f")))
    assert Path(world["target"], "vol", "f").read_bytes() == b"PATCHt touch"


def test_patch_after_symlink_swapped_in(world: dict[str, Any]) -> None:
    def act(vol: str) -> None:
        os.unlink(os.path.join(vol, "f"))
        os.symlink(os.path.join(world["outside"], "secret"), os.path.join(vol, "f"))
    patch = f("f", b"PATCH", size=12)
    error = run_case(world, [[ROOT, GOOD_FILE], [patch]], refused=False, hows=["full", "patch"],
                     extents=[(0, 5)], during=_attacker(world, "vol:f", act))
    assert error is not None and "vol:f" in str(error)


def test_dir_swapped_for_symlink_before_delete(world: dict[str, Any]) -> None:
    def act(vol: str) -> None:
        os.rename(os.path.join(vol, "dir"), os.path.join(vol, "moved-away"))
        os.symlink(os.path.join(world["outside"], "dir"), os.path.join(vol, "dir"))
    run_case(world, [[ROOT, d("dir"), f("dir/x"), d("zzz")], [rm("dir/x")]], refused=False,
             during=_attacker(world, "vol:zzz", act))
    assert Path(world["outside"], "dir", "x").exists()


def test_dir_swapped_for_symlink_before_put(world: dict[str, Any]) -> None:
    """The descriptor cache is cold again (70 other directories): the symlink is met, never followed."""
    def act(vol: str) -> None:
        os.rename(os.path.join(vol, "dir"), os.path.join(vol, "moved-away"))
        os.symlink(os.path.join(world["outside"], "dir"), os.path.join(vol, "dir"))
    others: list[Item] = [d(f"z{i:02d}") for i in range(70)]
    error = run_case(world, [[ROOT, d("dir"), *others], [f("dir/new", b"escape?")]], refused=False,
                     during=_attacker(world, "vol:z69", act))
    assert error is not None and "not a directory" in str(error)
    assert not Path(world["outside"], "dir", "new").exists()
