"""Entry-wise three-way merge of the account databases in /etc.

``passwd``, ``group``, ``shadow``, ``gshadow``, ``subuid`` and ``subgid`` are tables,
not prose: a line-by-line diff3 would turn "the admin added a user" plus "a package
added a system user" into a conflict, because both append at the end. They are
merged by entry instead, when both the local /etc and the new /usr/etc changed the
file (when only one side changed it, the ordinary rules of :mod:`retrofit.etc_merge`
apply: that side is taken whole).

Rules (BASE = old /usr/etc, LOCAL = old /etc, NEW = new /usr/etc):

- Entries are keyed by name (first field). The result keeps LOCAL's entries in
  LOCAL's order, then appends the entries that are new upstream (in NEW, not in BASE,
  not in LOCAL) in NEW's order. Comments, blank lines and NIS ``+``/``-`` lines of
  LOCAL are kept verbatim.
- Local users and groups are never removed, even when upstream dropped them (a
  note says so); an entry deleted locally but still in NEW stays deleted.
- An entry present on both sides is merged field by field: a field LOCAL left as in
  BASE takes NEW's value, otherwise LOCAL's value wins (entries added on both sides
  keep LOCAL's fields). Member lists (``group`` members, ``gshadow`` admins and
  members) are merged as sets: members added on either side are added, members
  removed on either side are removed; with no BASE entry the lists are unioned.
- The numeric id (uid in ``passwd``, gid in ``group``) of an existing local entry is
  never changed, because files on disk are owned by number. If NEW has another id
  for the same name, that is a *collision* (reported; LOCAL's id kept). A new
  upstream entry whose id is already used locally by another name is a collision
  too: it is not added, and the names so blocked in ``passwd`` are not added to
  ``shadow``/``subuid``/``subgid`` either (``group`` blocks ``gshadow``).
- ``subuid``/``subgid`` lines (``name:start:count``) are merged as a set of lines:
  all of LOCAL's lines are kept; a new upstream line is added unless its range
  overlaps a range of another owner, or its owner already has a different range
  locally (both are collisions).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

ACCOUNT_FILES = ("group", "passwd", "gshadow", "shadow", "subuid", "subgid")
"""The account databases, in the order they must be merged (ids before secrets)."""

# kind -> (number of fields, index of the numeric id or None, indexes of member lists)
_LAYOUT: dict[str, tuple[int, int | None, tuple[int, ...]]] = {
    "passwd": (7, 2, ()),
    "group": (4, 2, (3,)),
    "shadow": (9, None, ()),
    "gshadow": (4, None, (2, 3)),
}

BLOCKED_BY = {"shadow": "passwd", "subuid": "passwd", "subgid": "passwd", "gshadow": "group"}
"""Which file's blocked names a file inherits: a user not added to passwd gets no
shadow line either."""


@dataclass
class AccountMerge:
    """The outcome of merging one account file."""

    content: bytes
    collisions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    blocked: set[str] = field(default_factory=set)


def _lines(data: bytes) -> list[str]:
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _join(lines: list[str]) -> bytes:
    if not lines:
        return b""
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def _is_entry(line: str) -> bool:
    return bool(line) and ":" in line and line[0] not in "#+-"


def _entries(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in lines:
        if _is_entry(line):
            fields = line.split(":")
            out.setdefault(fields[0], fields)
    return out


def _set_merge(base: str | None, local: str, new: str) -> str:
    b = [m for m in base.split(",") if m] if base is not None else []
    l_ = [m for m in local.split(",") if m]
    n = [m for m in new.split(",") if m]
    kept = [m for m in l_ if not (m in b and m not in n)]
    added = [m for m in n if m not in l_ and m not in b]
    return ",".join(kept + added)


def group_id(group_content: bytes, name: str) -> int | None:
    """The gid of group ``name`` in a group file, or None."""
    fields = _entries(_lines(group_content)).get(name)
    if fields is None or len(fields) < 3:
        return None
    try:
        return int(fields[2])
    except ValueError:
        return None


def merge_accounts(
    kind: str,
    base: bytes | None,
    local: bytes,
    new: bytes,
    blocked: Iterable[str] = (),
) -> AccountMerge:
    """Merge one account file (``kind`` is its name, e.g. ``"passwd"``) by entry.

    ``blocked`` are names that must not be added from NEW (collisions found while
    merging the file this one depends on, see :data:`BLOCKED_BY`).
    """
    if kind in ("subuid", "subgid"):
        return _merge_ranges(kind, base, local, new, set(blocked))
    if kind not in _LAYOUT:
        raise ValueError(f"not an account file: {kind}")
    nfields, id_index, list_indexes = _LAYOUT[kind]
    what = "user" if kind in ("passwd", "shadow") else "group"
    idname = "uid" if kind == "passwd" else "gid"
    b_lines = _lines(base) if base is not None else []
    l_lines = _lines(local)
    n_lines = _lines(new)
    b_map, l_map, n_map = _entries(b_lines), _entries(l_lines), _entries(n_lines)
    result = AccountMerge(content=b"")
    blocked_in = set(blocked)

    used_ids: dict[str, str] = {}
    if id_index is not None:
        for name, f in l_map.items():
            if len(f) > id_index:
                used_ids.setdefault(f[id_index], name)

    out: list[str] = []
    for line in l_lines:
        if not _is_entry(line):
            out.append(line)
            continue
        lf = line.split(":")
        name = lf[0]
        nf = n_map.get(name)
        bf = b_map.get(name)
        if nf is None:
            if bf is not None and bf == lf:
                result.notes.append(
                    f"{kind}: {what} '{name}' was removed upstream; kept (local accounts "
                    "are never removed)"
                )
            out.append(line)
            continue
        if nf == lf:
            out.append(line)
            continue
        if len(lf) != nfields or len(nf) != nfields or (bf is not None and len(bf) != nfields):
            result.notes.append(f"{kind}: entry '{name}' is malformed; kept the local line")
            out.append(line)
            continue
        merged: list[str] = []
        for i in range(nfields):
            bv = bf[i] if bf is not None else None
            if i == id_index:
                merged.append(lf[i])
                if nf[i] != lf[i] and nf[i] != bv:
                    result.collisions.append(
                        f"{kind}: {what} '{name}' has {idname} {lf[i]} locally but "
                        f"{nf[i]} upstream; kept {lf[i]}"
                    )
            elif i in list_indexes:
                merged.append(_set_merge(bv, lf[i], nf[i]))
            elif bv is not None and lf[i] == bv:
                merged.append(nf[i])
            else:
                merged.append(lf[i])
        out.append(":".join(merged))

    seen: set[str] = set()
    for line in n_lines:
        if not _is_entry(line):
            continue
        nf = line.split(":")
        name = nf[0]
        if name in l_map or name in seen:
            continue  # merged above, or a duplicate line in NEW (the first one counts)
        seen.add(name)
        if name in b_map:
            result.notes.append(
                f"{kind}: {what} '{name}' was deleted locally; not re-added from upstream"
            )
            continue
        if name in blocked_in:
            result.blocked.add(name)
            result.notes.append(
                f"{kind}: {what} '{name}' not added (its {BLOCKED_BY.get(kind, kind)} entry "
                "collides)"
            )
            continue
        if id_index is not None and len(nf) > id_index:
            owner = used_ids.get(nf[id_index])
            if owner is not None and owner != name:
                result.blocked.add(name)
                result.collisions.append(
                    f"{kind}: new upstream {what} '{name}' has {idname} {nf[id_index]}, "
                    f"already used locally by '{owner}'; not added"
                )
                continue
            used_ids.setdefault(nf[id_index], name)
        out.append(line)
    result.content = _join(out)
    return result


def _parse_range(line: str) -> tuple[str, int, int] | None:
    parts = line.split(":")
    if len(parts) != 3:
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        return None


def _merge_ranges(
    kind: str, base: bytes | None, local: bytes, new: bytes, blocked: set[str]
) -> AccountMerge:
    b_lines = set(_lines(base)) if base is not None else set()
    out = _lines(local)
    result = AccountMerge(content=b"")
    present = set(out)
    ranges = [r for r in (_parse_range(x) for x in out) if r is not None]
    for line in _lines(new):
        if line in present:
            continue
        if line in b_lines:
            result.notes.append(f"{kind}: '{line}' was deleted locally; not re-added")
            continue
        parsed = _parse_range(line)
        if parsed is None:
            out.append(line)
            present.add(line)
            continue
        name, start, count = parsed
        if name in blocked:
            result.blocked.add(name)
            result.notes.append(f"{kind}: '{line}' not added (its passwd entry collides)")
            continue
        clash = None
        for owner, s, c in ranges:
            if owner == name:
                clash = f"'{name}' already has the range {s}:{c} locally"
                break
            if start < s + c and s < start + count:
                clash = f"the range overlaps {owner}'s {s}:{c}"
                break
        if clash is not None:
            result.blocked.add(name)
            result.collisions.append(f"{kind}: new upstream '{line}' not added: {clash}")
            continue
        out.append(line)
        present.add(line)
        ranges.append(parsed)
    result.content = _join(out)
    return result
