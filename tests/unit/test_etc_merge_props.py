"""Properties of the /etc merge on generated trees (files, directories, symlinks,
modes, owners, xattrs):

- merge(B, L, B) == L      nothing upstream: the machine's /etc is unchanged
- merge(B, B, N) == N      nothing local: the new /usr/etc is taken
- merge(B, X, X) == X      both sides agree
- a file added locally is never lost
- the result never makes an entry more readable than the sides it came from
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrofit.etc_merge import CONFLICT_SUFFIX, merge_etc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, xattrs)")

# A tree is {name: entry}; an entry is ("file", lines, mode, uid, xattr),
# ("link", target, uid) or ("dir", tree, mode, uid).
Tree = Dict[str, Any]

NAMES = st.sampled_from(["a", "b", "c.conf", "d"])
LINES = st.lists(st.sampled_from([b"x=1\n", b"x=2\n", b"y=1\n", b"# c\n", b"\n", b"z"]), max_size=5)
FILE_MODES = st.sampled_from([0o600, 0o640, 0o644, 0o755, 0o4755])
DIR_MODES = st.sampled_from([0o700, 0o750, 0o755])
UIDS = st.sampled_from([0, 1000])
XATTRS = st.sampled_from([None, b"1", b"2"])

files = st.tuples(st.just("file"), LINES, FILE_MODES, UIDS, XATTRS)
links = st.tuples(st.just("link"), st.sampled_from(["a", "../b", "/nowhere"]), UIDS)
entries = st.recursive(
    st.one_of(files, links),
    lambda children: st.tuples(
        st.just("dir"), st.dictionaries(NAMES, children, max_size=3), DIR_MODES, UIDS
    ),
    max_leaves=6,
)
trees = st.dictionaries(NAMES, entries, max_size=4)

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def build(root: Path, tree: Tree) -> None:
    root.mkdir()
    os.chmod(root, 0o755)
    for name, e in tree.items():
        p = root / name
        if e[0] == "file":
            p.write_bytes(b"".join(e[1]))
            os.chown(p, e[3], e[3])
            os.chmod(p, e[2])
            if e[4] is not None:
                os.setxattr(p, "user.t", e[4])
        elif e[0] == "link":
            os.symlink(e[1], p)
            os.chown(p, e[2], e[2], follow_symlinks=False)
        else:
            build(p, e[1])
            os.chown(p, e[3], e[3])
            os.chmod(p, e[2])


Snap = Dict[str, Tuple[Union[str, int, bytes, None], ...]]


def snapshot(root: Path) -> Snap:
    """Every entry under root: type, content or target, mode, owner, xattrs."""
    out: Snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            s = os.lstat(p)
            if stat.S_ISLNK(s.st_mode):
                out[rel] = ("link", os.readlink(p), s.st_uid, s.st_gid)
                continue
            x = {k: os.getxattr(p, k) for k in os.listxattr(p)}
            kind_content: tuple[str, bytes | None] = (
                ("dir", None) if stat.S_ISDIR(s.st_mode) else ("file", Path(p).read_bytes())
            )
            out[rel] = (
                *kind_content,
                stat.S_IMODE(s.st_mode),
                s.st_uid,
                s.st_gid,
                repr(sorted(x.items())),
            )
    return out


def _scratch() -> str | None:
    """tmpfs when it takes user xattrs (rmdir on a disk costs ~1 ms here), else the
    default temporary directory."""
    try:
        with tempfile.NamedTemporaryFile(dir="/dev/shm") as f:
            os.setxattr(f.name, "user.probe", b"1")
        return "/dev/shm"
    except OSError:
        return None


SCRATCH = _scratch()


def run(b: Tree, l_: Tree, n: Tree) -> tuple[Snap, Snap, Snap, Snap]:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        t = Path(tmp)
        build(t / "b", b)
        build(t / "l", l_)
        build(t / "n", n)
        merge_etc(t / "b", t / "l", t / "n", t / "o")
        return snapshot(t / "b"), snapshot(t / "l"), snapshot(t / "n"), snapshot(t / "o")


@SETTINGS
@given(trees, trees)
def test_nothing_upstream_keeps_local(b: Tree, l_: Tree) -> None:
    _, sl, _, so = run(b, l_, b)
    assert so == sl


@SETTINGS
@given(trees, trees)
def test_nothing_local_takes_new(b: Tree, n: Tree) -> None:
    _, _, sn, so = run(b, b, n)
    assert so == sn


@SETTINGS
@given(trees, trees)
def test_same_change_on_both_sides(b: Tree, x: Tree) -> None:
    _, sx, _, so = run(b, x, x)
    assert so == sx


@SETTINGS
@given(trees, trees, trees)
def test_local_only_files_are_never_lost(b: Tree, l_: Tree, n: Tree) -> None:
    sb, sl, _, so = run(b, l_, n)
    for rel, entry in sl.items():
        if rel not in sb and entry[0] != "dir":
            assert rel in so, rel
            assert so[rel][:2] == entry[:2], rel  # same type and content


def _go(entry: tuple[Any, ...]) -> int:
    return int(entry[2]) & 0o077


@SETTINGS
@given(trees, trees, trees)
def test_result_never_loosens_a_mode(b: Tree, l_: Tree, n: Tree) -> None:
    sb, sl, sn, so = run(b, l_, n)
    for rel, out in so.items():
        if out[0] == "link" or rel.endswith(CONFLICT_SUFFIX):
            continue
        lo, ne, ba = sl.get(rel), sn.get(rel), sb.get(rel)
        if lo is not None and lo[0] == out[0]:
            if ne is None or ne[0] != out[0]:
                assert _go(out) == _go(lo), rel  # nothing else to take a mode from
            elif ba is not None and ba == lo:
                assert out == ne, rel  # local untouched: NEW whole
            elif ba is not None and ba == ne:
                assert out == lo, rel  # upstream untouched: LOCAL whole
            elif out[0] == "file" and out[1] == lo[1] and lo[1] != ne[1]:
                assert _go(out) & ~_go(lo) == 0, rel  # local content, local-or-stricter mode
            elif lo != ne:
                assert _go(out) & ~(_go(lo) & _go(ne)) == 0, rel
        elif ne is not None and ne[0] == out[0]:
            assert _go(out) == _go(ne), rel
