"""Entry-wise merge of passwd, group, shadow, gshadow, subuid and subgid."""

from __future__ import annotations

import pytest

from retrofit.account_merge import group_id, merge_accounts

ROOT = "root:x:0:0:root:/root:/bin/bash\n"
ALICE = "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
CHRONY = "_chrony:x:105:110:Chrony:/run/chrony:/usr/sbin/nologin\n"


def merge(kind: str, b: str | None, l_: str, n: str, blocked: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    return merge_accounts(kind, None if b is None else b.encode(), l_.encode(), n.encode(), blocked)


def test_local_user_kept_and_package_user_added() -> None:
    r = merge("passwd", ROOT, ROOT + ALICE, ROOT + CHRONY)
    assert r.content.decode() == ROOT + ALICE + CHRONY
    assert not r.collisions and not r.blocked


def test_user_removed_upstream_is_kept_with_a_note() -> None:
    r = merge("passwd", ROOT + CHRONY, ROOT + CHRONY, ROOT)
    assert r.content.decode() == ROOT + CHRONY
    assert r.notes == [
        "passwd: user '_chrony' was removed upstream; kept (local accounts are never removed)"
    ]


def test_user_deleted_locally_stays_deleted() -> None:
    r = merge("passwd", ROOT + CHRONY, ROOT, ROOT + CHRONY + ALICE)
    assert r.content.decode() == ROOT + ALICE
    assert "was deleted locally" in r.notes[0]


def test_fields_merge_three_way() -> None:
    base = "bob:x:1001:1001:Bob:/home/bob:/bin/sh\n"
    local = "bob:x:1001:1001:Bob:/home/bob:/bin/zsh\n"
    new = "bob:x:1001:1001:Robert:/home/bob:/bin/sh\n"
    r = merge("passwd", base, local, new)
    assert r.content.decode() == "bob:x:1001:1001:Robert:/home/bob:/bin/zsh\n"


def test_same_name_different_uid_is_a_collision_and_local_uid_kept() -> None:
    r = merge("passwd", ROOT, ROOT + "pg:x:1001:1001::/var/lib/pg:/bin/sh\n",
              ROOT + "pg:x:115:120::/var/lib/postgresql:/bin/sh\n")  # fmt: skip
    assert r.content.decode() == ROOT + "pg:x:1001:1001::/var/lib/pg:/bin/sh\n"
    assert r.collisions == ["passwd: user 'pg' has uid 1001 locally but 115 upstream; kept 1001"]


def test_upstream_renumbering_is_a_collision() -> None:
    r = merge("group", "ssh:x:101:\n", "ssh:x:101:\n", "ssh:x:108:\n")
    assert r.content == b"ssh:x:101:\n"
    assert r.collisions == ["group: group 'ssh' has gid 101 locally but 108 upstream; kept 101"]


def test_local_renumbering_is_not_a_collision() -> None:
    r = merge("group", "ssh:x:101:\nx:x:1:\n", "ssh:x:201:\nx:x:1:\n", "ssh:x:101:\nx:x:1:a\n")
    assert r.content == b"ssh:x:201:\nx:x:1:a\n" and not r.collisions


def test_same_id_different_name_is_blocked() -> None:
    r = merge("passwd", ROOT, ROOT + ALICE, ROOT + "bob:x:1000:1000::/home/bob:/bin/sh\n")
    assert r.content.decode() == ROOT + ALICE
    assert r.blocked == {"bob"}
    assert r.collisions == [
        "passwd: new upstream user 'bob' has uid 1000, already used locally by 'alice'; not added"
    ]


def test_blocked_names_are_not_added_to_shadow() -> None:
    r = merge("shadow", "root:*:1::::::\n", "root:*:1::::::\n",
              "root:*:1::::::\nbob:!:1::::::\n", blocked=("bob",))  # fmt: skip
    assert r.content == b"root:*:1::::::\n"
    assert r.blocked == {"bob"} and not r.collisions


def test_group_members_merge_as_sets() -> None:
    base = "sudo:x:27:alice,bob\n"
    local = "sudo:x:27:alice,carol\n"  # bob removed, carol added locally
    new = "sudo:x:27:alice,bob,_svc\n"  # _svc added upstream
    r = merge("group", base, local, new)
    assert r.content == b"sudo:x:27:alice,carol,_svc\n"


def test_group_members_unioned_when_added_on_both_sides() -> None:
    r = merge("group", "", "docker:x:999:alice\n", "docker:x:999:_ci\n")
    assert r.content == b"docker:x:999:alice,_ci\n"


def test_gshadow_admins_and_members() -> None:
    r = merge("gshadow", "adm:*::a\n", "adm:*:root:a,b\n", "adm:!:ops:a,c\n")
    assert r.content == b"adm:!:root,ops:a,b,c\n"


def test_comments_and_missing_newline_survive() -> None:
    r = merge("group", "root:x:0:", "# local comment\nroot:x:0:", "root:x:0:\nnew:x:5:")
    assert r.content == b"# local comment\nroot:x:0:\nnew:x:5:\n"


def test_subuid_ranges() -> None:
    base = "alice:100000:65536\n"
    local = base + "bob:165536:65536\n"
    new = base + "svc:231072:65536\n" + "evil:170000:10\n" + "alice:300000:10\n"
    r = merge("subuid", base, local, new)
    assert r.content.decode() == local + "svc:231072:65536\n"
    assert r.collisions == [
        "subuid: new upstream 'evil:170000:10' not added: the range overlaps bob's 165536:65536",
        "subuid: new upstream 'alice:300000:10' not added: 'alice' already has the range "
        "100000:65536 locally",
    ]
    assert r.blocked == {"evil", "alice"}


def test_group_id() -> None:
    assert group_id(b"root:x:0:\nshadow:x:42:\n", "shadow") == 42
    assert group_id(b"root:x:0:\n", "shadow") is None
    assert group_id(b"shadow:x:bad:\n", "shadow") is None


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        merge_accounts("hosts", b"", b"", b"")
