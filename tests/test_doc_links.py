"""The links between the project's Markdown pages resolve: the file exists, and a ``#fragment``
names a heading of it (as GitHub makes heading anchors). Pages get split and headings renamed;
a link that points nowhere is found here rather than by a reader."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@functools.cache
def anchors(page: Path) -> frozenset[str]:
    """Every heading anchor of ``page``, repeated headings numbered as GitHub does (read once
    per page, however many links point into it)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m is None:
            continue
        base = anchor(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def local_links(page: Path) -> list[str]:
    """The links of ``page`` that point inside the repository (not to a web address)."""
    text = page.read_text(encoding="utf-8")
    return [t for t in _LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_anchor_follows_githubs_rules() -> None:
    assert anchor("A fleet's shape: 10,000 devices (2026-12-05, later)") == \
        "a-fleets-shape-10000-devices-2026-12-05-later"
    assert anchor("Sizing the broker's queue for the hub") == "sizing-the-brokers-queue-for-the-hub"


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "a.md"
    page.write_text("# Title\n\n## Part\n\n[ok](#part) [bad](#nowhere) [gone](b.md)\n")
    assert broken_links(page) == ["#nowhere", "b.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_local_link_resolves(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(REPO)} links to what does not exist: {broken}"


def broken_links(page: Path) -> list[str]:
    """The local links of ``page`` whose file or heading does not exist."""
    return [t for t in local_links(page) if _broken(page, t)]


def _broken(page: Path, target: str) -> bool:
    path, _, fragment = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    if not dest.exists():
        return True
    return bool(fragment) and dest.suffix == ".md" and fragment not in anchors(dest)
