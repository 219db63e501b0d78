"""Requests round-trip through the origin file; what retrofit status reads from it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpkg_layer import origin
from dpkg_layer.origin import LocalPackage, Requests
from retrofit import status
from retrofit.errors import RetrofitError, UsageError

BASE = "retrofit/debian/bookworm/amd64/base"
LAYERED = "retrofit/debian/bookworm/amd64/layered"
SHA = "ab" * 32

CONVERT_ORIGIN = f"""[origin]
refspec={BASE}

[retrofit]
version=1
base-refspec={BASE}
requested-packages=
requested-local-packages=
removed-base-packages=
"""


def test_the_converters_origin_is_nothing_layered() -> None:
    req = origin.parse(CONVERT_ORIGIN)
    assert req == Requests(base_refspec=BASE)
    assert not req.layered and req.refspec(LAYERED) == BASE
    assert origin.render(req, LAYERED) == CONVERT_ORIGIN


def test_round_trip_with_everything() -> None:
    req = Requests(
        base_refspec="central:debian/bookworm/x86_64/base",
        packages=("jq", "htop", "htop"),
        local_packages=(LocalPackage(SHA, "mytool"),),
        removed_base_packages=("nano",),
    )
    text = origin.render(req, LAYERED)
    assert f"refspec={LAYERED}\n" in text
    assert "requested-packages=htop jq\n" in text  # sorted, unique
    assert f"requested-local-packages={SHA}:mytool\n" in text
    assert origin.parse(text) == req
    # retrofit status reads the same keys
    groups = origin.parse_keyfile(text)
    assert status._split(groups["retrofit"]["requested-local-packages"]) == [f"{SHA}:mytool"]
    assert status._split(groups["retrofit"]["removed-base-packages"]) == ["nano"]


names = st.from_regex(r"[a-z0-9][a-z0-9+.-]{1,12}", fullmatch=True)


@given(
    pkgs=st.lists(names, max_size=5),
    local=st.lists(st.tuples(st.from_regex(r"[0-9a-f]{64}", fullmatch=True), names), max_size=3),
    removed=st.lists(names, max_size=3),
)
def test_round_trip_property(
    pkgs: list[str], local: list[tuple[str, str]], removed: list[str]
) -> None:
    req = Requests(
        base_refspec=BASE,
        packages=tuple(pkgs),
        local_packages=tuple(LocalPackage(s, n) for s, n in local),
        removed_base_packages=tuple(removed),
    )
    assert origin.parse(origin.render(req, LAYERED)) == req


def test_unknown_keys_are_kept_and_semicolons_accepted() -> None:
    text = CONVERT_ORIGIN.replace("requested-packages=\n", "requested-packages=a;b\nfuture-key=x\n")
    req = origin.parse(text)
    assert req.packages == ("a", "b")
    assert "future-key=x\n" in origin.render(req, LAYERED)


def test_origin_without_retrofit_group() -> None:
    req = origin.parse(f"[origin]\nrefspec={BASE}\n")
    assert req == Requests(base_refspec=BASE)


def test_newer_origin_version_is_refused() -> None:
    with pytest.raises(RetrofitError, match=r"version=2 is not supported"):
        origin.parse(CONVERT_ORIGIN.replace("version=1", "version=2"))


def test_bad_local_package_entry() -> None:
    bad = CONVERT_ORIGIN.replace("requested-local-packages=", "requested-local-packages=xyz:tool")
    with pytest.raises(RetrofitError, match="not a local package request"):
        origin.parse(bad)


def test_request_edits() -> None:
    req = Requests(base_refspec=BASE, packages=("htop",))
    req = req.with_packages(["jq"]).with_local([LocalPackage(SHA, "tool")])
    assert req.all_names() == ("htop", "jq", "tool")
    newer = LocalPackage("cd" * 32, "tool")
    assert req.with_local([newer]).local_packages == (newer,)  # replaced by name
    req = req.without(["htop", "tool"]).with_removals(["nano", "less"])
    assert req.packages == ("jq",) and not req.local_packages
    assert req.removed_base_packages == ("less", "nano")
    assert req.reset_removals(["nano"]).removed_base_packages == ("less",)
    assert req.reset_removals().removed_base_packages == ()
    assert req.rebased("central:x").base_refspec == "central:x"
    assert req.summary() == "packages: jq; removed: less nano"


def test_check_names() -> None:
    origin.check_names(["htop", "libc6:i386", "g++"], "install")
    with pytest.raises(UsageError, match="not a package name: Htop, a_b"):
        origin.check_names(["Htop", "ok", "a_b"], "install")
