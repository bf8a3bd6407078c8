"""The README is short and true (issue 32): every recipe, task, model, calibration, make target, command and path it
names exists; it stays under 300 lines and has a table of contents."""
import re
from pathlib import Path

import pytest

from qexp.config.compose import group_options

REPO = Path(__file__).resolve().parents[1]


def problems(text: str) -> list[str]:
    bad = []
    groups = {g: set(group_options(g)) for g in ("recipe", "task", "model", "calibration", "model/attention")}
    for key, values in re.findall(r"(?<![\w.])\+?(recipe|task|model|calibration|model/attention)=([\w/,]+)", text):
        for v in values.split(","):
            if v and v not in groups[key]:
                bad.append(f"{key}={v}")
    for g, names in re.findall(r"`(model|task|recipe|calibration|model/attention)` \| [^|]* \| ([^|]+) \|", text):
        for v in re.findall(r"`([\w/]+)`", names):
            if v not in groups[g]:
                bad.append(f"{g} option {v}")
    targets = set(re.findall(r"^([a-zA-Z0-9_-]+):", (REPO / "Makefile").read_text(), re.M))
    bad += [f"make {t}" for t in re.findall(r"\bmake ([a-z][\w-]*)", text) if t not in targets]
    commands = {"run", "ls", "search-space", "analyze", "tables", "bench"}
    bad += [f"qexp {c}" for c in re.findall(r"`qexp ([a-z-]+)", text) if c not in commands]
    # an output folder the runs write (listed in .gitignore, so absent from a fresh clone) counts as existing
    ignored = {line.strip("/") for line in (REPO / ".gitignore").read_text().split() if not line.startswith("!")}
    for path in re.findall(r"\b((?:docs|results|scripts|conf|qexp|tests|kernels)/[\w./-]*\w)", text):
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
