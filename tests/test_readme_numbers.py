"""Every number in the README is traced to where it comes from, so none goes stale unnoticed.

A paragraph or table with measured numbers sits under a ``<!-- numbers: COMMAND -->`` line naming the command that
produced them; the command must exist, and the cheap, deterministic ones (``qw model-stats``) are rerun here and
every number of the block must appear in their output. Any other number (a year, a bit width, a frame count of the
format) must be listed in docs/numbers.md with its source. Numbers inside code blocks and `code spans` are
commands and names, not claims, and are not checked.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from qw.cli import main

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!--\s*numbers:\s*(.+?)\s*-->")
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")
RERUN = ("qw model-stats",)  # commands cheap and deterministic enough to rerun in a test


def prose(text: str) -> str:
    """Text without fenced code, `code spans`, link targets and HTML comments."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    text = re.sub(r"^\s*\d+\. ", "", text, flags=re.M)  # ordered-list item numbers
    return re.sub(r"\]\([^)]*\)", "]", text)


def numbers(text: str) -> list[str]:
    return [n.replace(",", "") for n in NUMBER.findall(prose(text).replace("×", " "))]


def blocks(text: str) -> list[tuple[str | None, str]]:
    """(marker command or None, block text) for each block of lines between blank lines outside code fences; a
    marker line applies to the block it opens."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    out = []
    for chunk in re.split(r"\n\s*\n", text):
        marker = MARKER.search(chunk.split("\n", 1)[0])
        out.append((marker[1] if marker else None, chunk))
    return out


def listed_numbers() -> set[str]:
    """First column of docs/numbers.md's table."""
    rows = re.findall(r"^\|\s*([^|]+?)\s*\|", (ROOT / "docs" / "numbers.md").read_text(), flags=re.M)
    return {n.replace(",", "") for row in rows for n in NUMBER.findall(row)}


def untraced(text: str, listed: set[str]) -> list[str]:
    return [f"{n!r} in: {chunk.strip()[:80]!r}" for marker, chunk in blocks(text) if marker is None
            for n in numbers(chunk) if n not in listed]


def test_every_readme_number_is_traced():
    problems = untraced((ROOT / "README.md").read_text(), listed_numbers())
    assert not problems, "numbers with no <!-- numbers: COMMAND --> marker and not in docs/numbers.md:\n" + \
        "\n".join(problems)


def test_the_checker_catches_an_untraced_number():
    text = "The build took 597 s.\n\n<!-- numbers: qw model-stats -->\nIt has 1.238 M parameters.\n"
    assert untraced(text, set()) == ["'597' in: 'The build took 597 s.'"]


def marked_commands() -> list[tuple[str, str]]:
    return [(marker, chunk) for marker, chunk in blocks((ROOT / "README.md").read_text()) if marker]


@pytest.mark.parametrize("command,chunk", marked_commands(), ids=lambda x: x[:50] if isinstance(x, str) else "")
def test_marked_commands_exist_and_cheap_ones_reproduce_their_numbers(command, chunk):
    produced, rerun_all = set(), True
    for part in command.split(";"):
        argv = shlex.split(part)
        if argv[0] == "python":  # a benchmark: too costly to rerun here, but it must exist
            assert (ROOT / argv[1]).is_file(), f"{argv[1]}, named in a README marker, does not exist"
            rerun_all = False
            continue
        assert argv[0] == "qw", f"marker command {part!r}: a qw command or a python script of the repository"
        if not part.strip().startswith(RERUN):
            rerun_all = False
            continue
        result = CliRunner().invoke(main, argv[1:])
        assert result.exit_code == 0, result.output
        produced |= set(numbers(result.output.replace("x", " ")))
    missing = [n for n in numbers(chunk) if n not in produced]
    assert not rerun_all or not missing, f"{command}: README numbers {missing} are not in its output"


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings (outside code fences): lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_links_between_docs_resolve():
    """Every relative link of the README and docs/*.md names an existing file (relative to the page that holds it)
    and, with #anchor, a heading of that page."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken


def test_readme_sections_named_elsewhere_exist():
    """A doc page, `--help` text or docstring that sends the reader to a README section by name ('see README
    "Training"') names one the README has."""
    headings = {h.strip().lower() for h in re.findall(r"^#+ (.+)$", (ROOT / "README.md").read_text(), re.M)}
    sources = [*sorted((ROOT / "docs").glob("*.md"))] + [p for d in ("qw", "datagen", "training", "ue_capture")
                                                          for p in sorted((ROOT / d).rglob("*.py"))]
    named = [(p.relative_to(ROOT), s) for p in sources
             for s in re.findall(r'README(?:\'s)?(?: section)?,?\s+"([^"]+)"', p.read_text())]
    assert [(str(p), s) for p, s in named if s.strip().lower() not in headings] == []
