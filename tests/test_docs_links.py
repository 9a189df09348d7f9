"""Relative links in docs/ resolve to files in docs/ (what `mkdocs build --strict` checks in CI, here
in the default suite so a missing results page fails before CI), and every results page's
include-markdown target exists."""

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")
INCLUDE = re.compile(r'include-markdown "([^"]+)"')


def _pages():
    return sorted(DOCS.rglob("*.md"))


def test_every_relative_markdown_link_in_docs_resolves():
    missing = []
    for page in _pages():
        for target in LINK.findall(page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).resolve().is_file():
                missing.append(f"{page.relative_to(DOCS)} -> {target}")
    assert missing == [], missing


def test_every_included_file_exists():
    missing = []
    for page in _pages():
        for target in INCLUDE.findall(page.read_text()):
            if not (page.parent / target).resolve().is_file():
                missing.append(f"{page.relative_to(DOCS)} -> {target}")
    assert missing == [], missing
    assert any(INCLUDE.search(p.read_text()) for p in _pages())
