"""The README and docs/: the README stays a short map, every relative link resolves (file and
heading anchor), and every docs page is linked from the README. No network: http(s) links are
not fetched."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 150

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fence = [], None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1) == fence:
                fence = None
            continue
        if fence is None:
            lines.append(line)
    return lines


def links(text: str) -> list[str]:
    """Targets of Markdown links outside code blocks and inline code spans."""
    targets = []
    for line in prose_lines(text):
        targets += _LINK.findall(_INLINE_CODE.sub("", line))
    return targets


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation other than '-'
    and '_' removed, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings; a repeated slug gets -1, -2, ... as on
    GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        s = slug(m.group(2))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """Each relative link of ``path`` whose file, or whose #anchor in that file, is missing."""
    problems = []
    for target in links(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{target}: no file {dest}")
        elif anchor:
            if not dest.is_file():
                problems.append(f"{target}: an anchor into a folder")
            elif anchor not in anchors(dest):
                problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    return problems


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines, at most {README_MAX_LINES}"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(path):
    assert broken_links(path) == []


def test_every_docs_page_is_linked_from_readme():
    assert DOCS, "docs/ has no pages"
    linked = {(README.parent / t.partition("#")[0]).resolve()
              for t in links(README.read_text(encoding="utf-8")) if t.partition("#")[0]}
    missing = [p.name for p in DOCS if p.resolve() not in linked]
    assert missing == [], f"docs pages not linked from README.md: {missing}"


def test_checker_catches_broken_links(tmp_path):
    (tmp_path / "b.md").write_text("# Part 1. Setup: `make` it\n\n## Part 1. Setup: `make` it\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md) [ok](b.md#part-1-setup-make-it) [ok](b.md#part-1-setup-make-it-1)\n"
        "[ok](#top) [web](https://example.com/x.md) `[code](nothere.md)`\n"
        "# Top\n"
        "```\n[fenced](nothere.md)\n```\n"
        "[bad](nothere.md) [bad](b.md#nothere) [bad](#nothere)\n")
    assert [p.split(":")[0] for p in broken_links(page)] == [
        "nothere.md", "b.md#nothere", "#nothere"]
