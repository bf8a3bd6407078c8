"""The README is short and true (issue 32): every recipe, task, model, calibration, make target, command and path it
names exists; it stays under 300 lines and has a table of contents."""
import re
from pathlib import Path

import pytest

from qexp.config.compose import group_options

REPO = Path(__file__).resolve().parents[1]


def problems(text: str, make_in_code_only: bool = False) -> list[str]:
    """The names in ``text`` that do not exist.  A name followed by ``*``, ``<`` or ``{`` is a pattern, not a name.
    ``make_in_code_only``: only `` `make X` `` counts as a target (prose says "make them")."""
    bad = []
    groups = {g: set(group_options(g)) for g in ("recipe", "task", "model", "calibration", "model/attention")}
    for key, values, after in re.findall(r"(?<![\w.])\+?(recipe|task|model|calibration|model/attention)=([\w/,]+)(.?)",
                                         text):
        for v in values.split(","):
            if v and v not in groups[key] and not (v == values.split(",")[-1] and after in "*<{" and after):
                bad.append(f"{key}={v}")
    for g, names in re.findall(r"`(model|task|recipe|calibration|model/attention)` \| [^|]* \| ([^|]+) \|", text):
        for v in re.findall(r"`([\w/]+)`", names):
            if v not in groups[g]:
                bad.append(f"{g} option {v}")
    targets = set(re.findall(r"^([a-zA-Z0-9_-]+):", (REPO / "Makefile").read_text(), re.M))
    make = r"`make\s+([a-z][\w-]*)(.?)" if make_in_code_only else r"\bmake ([a-z][\w-]*)(.?)"
    bad += [f"make {t}" for t, after in re.findall(make, text) if t not in targets and not (after and after in "*<{")]
    commands = {"run", "ls", "search-space", "analyze", "tables", "bench"}
    bad += [f"qexp {c}" for c in re.findall(r"`qexp ([a-z-]+)", text) if c not in commands]
    # an output folder the runs write (listed in .gitignore, so absent from a fresh clone) counts as existing
    ignored = {line.strip("/") for line in (REPO / ".gitignore").read_text().split() if not line.startswith("!")}
    # a repository path: at a word start or after ../ (not inside ~/.cache/qexp/...)
    for path, after in re.findall(r"(?:(?<=\.\./)|(?<![\w/~.-]))((?:docs|results|scripts|conf|qexp|tests|kernels)/"
                                  r"[\w./-]*\w)(.?)", text):
        if after and after in "*<{":
            continue
        if not any(ch in path for ch in "*<") and not (REPO / path).exists() and path.strip("/") not in ignored:
            bad.append(f"path {path}")
    backends = {"fake", "torch_int", "cpu_int8", "cupy_int8"}
    bad += [f"backend {b}" for b in re.findall(r"inference\.backend=(\w+)", text) if b not in backends]
    return bad


def test_the_readme_names_only_what_exists():
    text = (REPO / "README.md").read_text()
    assert problems(text) == []


def test_the_readme_is_short_and_navigable():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300 and "## Contents" in text
    for anchor in re.findall(r"\]\(#([\w-]+)\)", text):
        heads = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in re.findall(r"^## (.+)$", text,
                                                                                                    re.M)}
        assert anchor in heads, anchor


@pytest.mark.parametrize("planted", ["+recipe=w9a9_ptq", "make reproduce-everything", "task=mnli2",
                                     "see docs/nowhere.md", "see results/tbx", "`qexp frobnicate`", "inference.backend=int3"])
def test_a_planted_wrong_name_is_caught(planted):
    text = (REPO / "README.md").read_text() + f"\n{planted}\n"
    assert problems(text), planted


def test_every_doc_link_resolves():
    for doc in (REPO / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([^)#]+)\)", doc.read_text()):
            if not link.startswith("http"):
                assert (doc.parent / link).resolve().exists() or (REPO / link).exists(), (doc.name, link)


# docs/replay_issue27.md quotes the bad inputs of issue 27 on purpose (model=nope, results/run)
DOCS = sorted(d for d in (REPO / "docs").glob("*.md") if d.name != "replay_issue27.md")


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_the_docs_name_only_what_exists(doc):
    """The per-paper docs name the same recipes, tasks, make targets, commands and paths as the README, and they exist
    (a doc named `make bondarenko2021-mini` long after the target went)."""
    assert problems(doc.read_text(), make_in_code_only=True) == []


@pytest.mark.parametrize("planted", ["`make bondarenko2021-mini`", "+recipe=peg_ptqq", "see results/tables/nope.md"])
def test_a_planted_wrong_name_in_a_doc_is_caught(planted):
    assert problems((REPO / "docs" / "usage.md").read_text() + f"\n{planted}\n", make_in_code_only=True)
