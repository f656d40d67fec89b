"""The documentation a reader has is whole and self-contained: README.md stays a short user
guide, every relative link and every file path written in backticks in README.md and
docs/**/*.md (and the two component READMEs) points at something in this repository, nothing
points at files a reader of this repository does not have, and no page narrates benchmark
runs by time of day (figures carry a date and a machine, not "the run of 13:13"). The same
holds for the code: no tracked source, test, script or doc file sends a reader to those files,
and every pointer into docs/bybit.md names one of its headings."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_BYTES = 12 * 1024

# Files that exist only where the gateway was designed, not in this repository.
# DESIGN and PROTOCOL in capitals name those files ("a no-op by design" is fine).
FOREIGN = re.compile(r"\bDESIGN\b|\bPROTOCOL\b|(?i:design\.md|protocol\.md|ecosystem\.md|peers\.md|\.\./shared"
                     r"|/work" r"/shared|\bresearch section\b|\bissues?\s+#?\d+)")
# Benchmark narrative by time of day: "the run of 13:13", "at 13:47", "runs of 11:13-12:07".
TIME_OF_DAY = re.compile(r"\b(?:runs?|at|the|since|before|after|from|until|of)\s+\d{1,2}:\d{2}\b"
                         r"|\b\d{1,2}:\d{2}\s*(?:-|–|to)\s*\d{1,2}:\d{2}\b", re.I)
# A backticked token written as a file path: made of path characters and either naming a
# top-level entry of the repository or ending in a file extension.
PATHLIKE = re.compile(r"^\.?[A-Za-z0-9_][A-Za-z0-9_.*-]*(?:/[A-Za-z0-9_.*-]+)*/?$")
EXTENSIONS = (".py", ".md", ".yml", ".yaml", ".json", ".jsonl", ".sh", ".sql", ".conf", ".toml", ".txt",
              ".png", ".ini", ".cfg", ".in")
ROOT_FILES = {"Makefile", "Dockerfile", "env.example"}
# Made at run time, not kept in the repository: the venv (bootstrap), logs and run directory (make run).
RUNTIME_PREFIXES = (".venv/", "logs/", "run/")


# Tracked files a reader reads: code, tests, scripts, configuration and docs. This file names the
# patterns it looks for; docs/bench holds generated benchmark output (its README is checked).
SOURCE_SUFFIXES = (".py", ".md", ".sh", ".toml", ".conf", ".yml", ".yaml", ".ini", ".cfg", ".sql", ".txt", ".in")
SOURCE_NAMES = {"Makefile", "Dockerfile"}
SKIPPED_DIRS = {".git", ".venv", "logs", "run", "node_modules", "__pycache__", ".pytest_cache"}
BYBIT_POINTER = re.compile(r"docs/bybit\.md#([A-Za-z0-9_-]+)")


def source_files() -> list[Path]:
    """Tracked files (``git ls-files``; without git, every file outside run-time directories)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30)
        paths = [ROOT / p for p in out.stdout.decode().split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        paths = [p for p in ROOT.rglob("*") if p.is_file()
                 and not SKIPPED_DIRS.intersection(p.relative_to(ROOT).parts)]
    this = Path(__file__).resolve()
    out = []
    for p in paths:
        rel = p.relative_to(ROOT).as_posix()
        if p.resolve() == this or (rel.startswith("docs/bench/") and rel != "docs/bench/README.md"):
            continue
        if (p.suffix in SOURCE_SUFFIXES or p.name in SOURCE_NAMES) and p.is_file():
            out.append(p)
    return sorted(out)


def heading_anchor(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's rule) gives a heading's text."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {heading_anchor(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*$", without_fences(doc.read_text()), re.M)}


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "publisher" / "README.md", ROOT / "persister" / "README.md"]
    return files + sorted((ROOT / "docs").rglob("*.md"))


def without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def relative_links(text: str) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_fences(text))
    return [t for t in targets if not re.match(r"^(?:[a-z][a-z0-9+.-]*:|#)", t, re.I)]


def backticked_paths(text: str) -> list[str]:
    top = {p.name for p in ROOT.iterdir()}
    out = []
    for token in re.findall(r"`([^`\n]+)`", without_fences(text)):
        if not PATHLIKE.match(token) or token.startswith(RUNTIME_PREFIXES):
            continue
        if token in ROOT_FILES or token.rstrip("/").split("/")[0] in top and "/" in token \
                or token.endswith(EXTENSIONS):
            out.append(token)
    return out


def resolves(doc: Path, target: str) -> bool:
    """``target`` names an existing file or directory inside the repository, relative to the
    page's own directory or to the repository root (how the pages write paths); a glob must
    match at least one."""
    target = target.split("#", 1)[0]
    for base in (doc.parent, ROOT):
        candidate = (base / target)
        matches = list(base.glob(target.rstrip("/"))) if "*" in target else [candidate]
        for m in matches:
            try:
                m.resolve().relative_to(ROOT)
            except ValueError:
                continue
            if m.exists():
                return True
    return False


def test_readme_is_short():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; at most {README_MAX_BYTES}: move detail to docs/"


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_paths_resolve(doc):
    text = doc.read_text()
    broken = [t for t in relative_links(text) if not resolves(doc, t)]
    assert broken == [], f"{doc.relative_to(ROOT)}: links to nothing in the repository: {broken}"
    missing = [t for t in backticked_paths(text) if not resolves(doc, t)]
    assert missing == [], f"{doc.relative_to(ROOT)}: names files the repository does not have: {missing}"


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_foreign_references_or_time_of_day_narrative(doc):
    lines = doc.read_text().splitlines()
    foreign = [f"{i}: {line.strip()[:100]}" for i, line in enumerate(lines, 1) if FOREIGN.search(line)]
    assert foreign == [], f"{doc.relative_to(ROOT)} refers to files a reader does not have:\n" + "\n".join(foreign)
    narrative = [f"{i}: {line.strip()[:100]}" for i, line in enumerate(lines, 1) if TIME_OF_DAY.search(line)]
    assert narrative == [], f"{doc.relative_to(ROOT)} narrates runs by time of day:\n" + "\n".join(narrative)


def test_no_source_file_points_outside_the_repository():
    """Code comments, docstrings, tests, scripts and docs say what they rely on themselves, or
    point at a page of this repository (docs/bybit.md for Bybit's API), never at design notes,
    protocol notes or issue numbers a reader of this repository does not have."""
    files = source_files()
    assert any(p.name == "app.py" and p.parent.name == "ingest" for p in files), "no source file found"
    foreign = []
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            continue
        foreign += [f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}"
                    for i, line in enumerate(lines, 1) if FOREIGN.search(line)]
    assert foreign == [], "references to files a reader of this repository does not have:\n" + "\n".join(foreign)


def test_pointers_into_the_bybit_page_name_its_headings():
    known = anchors(ROOT / "docs" / "bybit.md")
    broken = []
    for path in source_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        broken += [f"{path.relative_to(ROOT)}: #{a}" for a in BYBIT_POINTER.findall(text) if a not in known]
    assert broken == [], "docs/bybit.md has no such heading:\n" + "\n".join(broken)


def test_checks_catch_what_they_are_for(tmp_path):
    """The detectors themselves: each flags a sample of what it must catch and passes its fix."""
    doc = ROOT / "docs" / "x.md"
    assert not resolves(doc, "nowhere/missing.py") and resolves(doc, "internals.md")
    assert not resolves(doc, "../../etc/passwd") and resolves(doc, "../README.md")
    assert backticked_paths("see `publisher/amqp.py`, `ws-gateway.events`, `application/json`, `x.md`") == \
        ["publisher/amqp.py", "x.md"]
    assert relative_links("[a](docs/x.md) [b](https://example.com) [c](#top)") == ["docs/x.md"]
    # The samples are assembled from pieces so that this file does not itself point outside.
    design, protocol, shared, issue = "DES" + "IGN", "PROTO" + "COL", ".." + "/shared", "Iss" + "ue"
    for bad in ("the run of 13:13 missed it", "at 13:47 once joins", "runs of 11:13-12:07 UTC",
                f"Contract 2 of {design}.md", f"{design}'s target", f"see {issue} 7", f"({protocol}.md 9.10)",
                "research" + " section 8's table", f"in {shared}/bybit", f"as /work{shared[2:]}/bybit/notes",
                "eco" + "system.md section 3", f"the {design} target", f"({issue.lower()} 7)", "pe" + "ers.md"):
        assert TIME_OF_DAY.search(bad) or FOREIGN.search(bad), bad
    for good in ("measured on 2026-11-21", "p99 14.0 ms at load 4.2", "POST 1,385 req/s", "10:1 ratio",
                 "a no-op by design", "the AMQP protocol", "see docs/bybit.md#order-books", "the issuer 7"):
        assert not (TIME_OF_DAY.search(good) or FOREIGN.search(good)), good
    assert heading_anchor("Orders: realtime and history") == "orders-realtime-and-history"
    assert heading_anchor("Reconciliation (ingest, `ingest/reconcile.py`)") == "reconciliation-ingest-ingestreconcilepy"
    assert BYBIT_POINTER.findall("(docs/bybit.md#order-books).") == ["order-books"]
