"""libostree operations layering needs beyond retrofit.ostree: a hardlink checkout
that remembers each file's checksum, a commit that reuses them, reading files out of
a commit, reordering deployments, pulling, and counting objects."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

from retrofit import ostree as ot  # noqa: E402
from retrofit.errors import RetrofitError  # noqa: E402
from retrofit.run import run  # noqa: E402

AT_FDCWD = -100


def _gerror(action: str, exc: GLib.Error) -> RetrofitError:
    return RetrofitError(f"{action}: {exc.message}")


def checkout_hardlinks(repo: ot.Repo, rev: str, dest: Path) -> Any:
    """Check out ``rev`` at ``dest`` (which must not exist) as hardlinks into the
    object store. Returns the dev/inode -> checksum cache of every file it linked, for
    :func:`commit_dir`. The files ARE repository objects: write them only through
    :mod:`dpkg_layer.rofiles`."""
    opts = OSTree.RepoCheckoutAtOptions()
    opts.mode = OSTree.RepoCheckoutMode.NONE
    opts.overwrite_mode = OSTree.RepoCheckoutOverwriteMode.NONE
    opts.no_copy_fallback = True  # a copy would silently lose the sharing
    cache = OSTree.RepoDevInoCache.new()
    opts.set_devino(cache)
    try:
        repo.repo.checkout_at(opts, AT_FDCWD, str(dest), rev, None)
    except GLib.Error as exc:
        raise _gerror(f"checking out {rev[:12]}", exc) from None
    return cache


@dataclass(frozen=True)
class CommitResult:
    checksum: str
    content_written: int  # new file objects
    metadata_written: int  # new dirtree/dirmeta/commit objects
    bytes_written: int


def commit_dir(
    repo: ot.Repo,
    tree: Path,
    *,
    parent: str | None,
    subject: str,
    metadata: Mapping[str, GLib.Variant],
    devino: Any = None,
    ref: str | None = None,
) -> CommitResult:
    """Commit directory ``tree`` as it is. Files still hardlinked to objects listed in
    ``devino`` are not read again: only what changed is written."""
    modifier = OSTree.RepoCommitModifier.new(OSTree.RepoCommitModifierFlags.NONE, None, None)
    if devino is not None:
        modifier.set_devino_cache(devino)
    r = repo.repo
    try:
        r.prepare_transaction(None)
        mtree = OSTree.MutableTree.new()
        dfd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
        try:
            r.write_dfd_to_mtree(dfd, ".", mtree, modifier, None)
        finally:
            os.close(dfd)
        ok, root = r.write_mtree(mtree, None)
        meta = GLib.Variant("a{sv}", dict(metadata))
        ok, checksum = r.write_commit(parent, subject, None, meta, root, None)
        if ref:
            r.transaction_set_ref(None, ref, checksum)
        ok, stats = r.commit_transaction(None)
    except GLib.Error as exc:
        r.abort_transaction(None)
        raise _gerror("writing the commit", exc) from None
    return CommitResult(
        checksum=str(checksum),
        content_written=int(stats.content_objects_written),
        metadata_written=int(stats.metadata_objects_written),
        bytes_written=int(stats.content_bytes_written),
    )


def read_file(repo: ot.Repo, rev: str, path: str) -> bytes | None:
    """The content of ``path`` in commit ``rev`` (symlinks followed inside the
    commit), or None if there is no such file."""
    try:
        ok, root, _csum = repo.repo.read_commit(rev, None)
    except GLib.Error as exc:
        raise _gerror(f"reading commit {rev[:12]}", exc) from None
    f = root.resolve_relative_path(path.lstrip("/"))
    for _ in range(10):
        try:
            info = f.query_info(
                "standard::type,standard::symlink-target",
                Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS,
                None,
            )
        except GLib.Error:
            return None
        if info.get_file_type() == Gio.FileType.REGULAR:
            break
        if info.get_file_type() != Gio.FileType.SYMBOLIC_LINK:
            return None
        target = info.get_symlink_target()
        if target.startswith("/"):
            f = root.resolve_relative_path(target.lstrip("/"))
        else:
            f = f.get_parent().resolve_relative_path(target)
    else:
        return None
    f.ensure_resolved()
    ok, stream, _info, _xattrs = repo.repo.load_file(f.get_checksum(), None)
    chunks = []
    while True:
        data = stream.read_bytes(1 << 20, None)
        if data.get_size() == 0:
            break
        chunks.append(bytes(data.get_data()))
    stream.close(None)
    return b"".join(chunks)


def commit_parent(repo: ot.Repo, rev: str) -> str | None:
    ok, commit = repo.repo.load_variant(OSTree.ObjectType.COMMIT, rev)
    parent = OSTree.commit_get_parent(commit)
    return str(parent) if parent else None


def object_count(repo_path: Path) -> int:
    """Objects in the store (files, dirtrees, dirmetas, commits)."""
    n = 0
    objects = repo_path / "objects"
    for d in os.scandir(objects):
        if d.is_dir():
            n += sum(1 for _ in os.scandir(d.path))
    return n


def reorder_deployments(sysroot: Path, first: ot.Deployment) -> None:
    """Make ``first`` the default deployment, the others keeping their order
    (libostree's write_deployments; ostree 2022.7 has no 'admin set-default')."""
    sr = OSTree.Sysroot.new(Gio.File.new_for_path(str(sysroot)))
    try:
        # On a booted host /boot (and maybe /sysroot) is a read-only bind: like the
        # ostree CLI, move this process into its own mount namespace where libostree
        # remounts them writable (a no-op for an offline sysroot).
        sr.initialize_with_mount_namespace(None)
    except GLib.Error as exc:
        raise _gerror(f"preparing the sysroot {sysroot} for writing", exc) from None
    try:
        sr.lock()
    except GLib.Error as exc:
        raise _gerror(f"locking the sysroot {sysroot}", exc) from None
    try:
        sr.load(None)
        deps = list(sr.get_deployments())
        target = next(
            (
                d
                for d in deps
                if d.get_csum() == first.checksum
                and d.get_deployserial() == first.serial
                and d.get_osname() == first.stateroot
            ),
            None,
        )
        if target is None:
            raise RetrofitError(f"deployment {first.name} is gone")
        order = [target] + [d for d in deps if not d.equal(target)]
        sr.write_deployments(order, None)
    except GLib.Error as exc:
        raise _gerror("writing the deployment list", exc) from None
    finally:
        sr.unlock()


def undeploy(sysroot: Path, indexes: Sequence[int]) -> None:
    """Remove deployments by index (highest first so indexes stay valid)."""
    for i in sorted(indexes, reverse=True):
        run(["ostree", "admin", "undeploy", f"--sysroot={sysroot}", str(i)])


def admin_cleanup(sysroot: Path) -> None:
    """Delete leftover deployment directories and prune objects nothing refers to."""
    run(["ostree", "admin", "cleanup", f"--sysroot={sysroot}"])


def pull(repo_path: Path, remote: str, ref: str, metadata_only: bool = False) -> None:
    argv = ["ostree", "pull", f"--repo={repo_path}"]
    if metadata_only:
        argv.append("--commit-metadata-only")
    run(
        [*argv, remote, ref],
        hint=f"check the remote: ostree remote show-url --repo={repo_path} {remote}",
    )


def remotes(repo_path: Path) -> list[str]:
    out = run(["ostree", "remote", "list", f"--repo={repo_path}"]).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def raw_metadata(repo: ot.Repo, rev: str) -> dict[str, GLib.Variant]:
    """A commit's metadata as variants (to copy keys into a child commit)."""
    ok, commit = repo.repo.load_variant(OSTree.ObjectType.COMMIT, rev)
    meta = commit.get_child_value(0)
    out = {}
    for i in range(meta.n_children()):
        entry = meta.get_child_value(i)
        key = entry.get_child_value(0).get_string()
        out[key] = entry.get_child_value(1).get_variant()
    return out


def set_refs(repo: ot.Repo, refs: Mapping[str, str | None]) -> dict[str, str | None]:
    """Point (or delete) several refs; returns their previous values (to restore)."""
    old = {}
    for ref, csum in refs.items():
        old[ref] = repo.resolve(ref)
        repo.set_ref(ref, csum)
    return old


_SUFFIX = {
    OSTree.ObjectType.FILE: "file",
    OSTree.ObjectType.DIR_TREE: "dirtree",
    OSTree.ObjectType.DIR_META: "dirmeta",
    OSTree.ObjectType.COMMIT: "commit",
}


def stored_objects(repo_path: Path) -> set[str]:
    """Names (``<checksum>.<type>``) of the objects in the store."""
    out = set()
    for d in os.scandir(repo_path / "objects"):
        if d.is_dir():
            out |= {d.name + e.name for e in os.scandir(d.path)}
    return out


def reachable_objects(repo: ot.Repo, rev: str) -> set[str]:
    """Names of every object commit ``rev`` consists of."""
    ok, objs = repo.repo.traverse_commit(rev, 0, None)
    out = set()
    for key in objs:
        csum, kind = key.unpack()
        out.add(f"{csum}.{_SUFFIX.get(OSTree.ObjectType(kind), 'unknown')}")
    return out
