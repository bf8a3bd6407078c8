"""Every table ``make tables`` writes, also as LaTeX (booktabs rules, via pandas' Styler), for pasting into a paper.

Where a table has a Markdown rendering (cells "ours (paper)", the paper's layout), its ``.tex`` is that rendering,
one LaTeX table per Markdown table, with the text before it as the caption; otherwise the ``.tex`` has the CSV's
columns (ours beside the ``paper_*`` columns where the CSV has them).  Numbers to 2 decimals, empty cells empty,
text escaped."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    styler = df.style.format(precision=2, na_rep="", escape="latex").hide(axis="index")
    styler = styler.format_index(escape="latex", axis=1)
    return styler.to_latex(hrules=True, caption=caption.replace("_", r"\_"), label=f"tab:{label}",
                           position_float="centering")


def markdown_tables(text: str) -> list[tuple[str, pd.DataFrame]]:
    """The pipe tables of a Markdown text, each with the prose lines just before it (its caption)."""
    out, prose, rows = [], [], []

    def flush():
        if len(rows) >= 2:
            header = [c.strip() for c in rows[0].strip().strip("|").split("|")]
            body = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows[2:]]
            out.append((" ".join(prose).strip(), pd.DataFrame(body, columns=header)))
        rows.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            rows.append(line)
            continue
        if rows:
            flush()
            prose = []
        if line.strip():
            prose.append(line.strip().lstrip("#").strip())
    flush()
    return out


def write_latex_for(written: dict[str, Path]) -> dict[str, Path]:
    """A ``.tex`` next to every table in ``written`` (name -> path): from its Markdown rendering when there is one,
    else from its CSV; returns the new entries."""
    out = {}
    for name, path in list(written.items()):
        path = Path(path)
        if path.suffix == ".md":
            parts = [to_latex(df, caption or path.stem, f"{path.stem}-{i}")
                     for i, (caption, df) in enumerate(markdown_tables(path.read_text()))]
            tex = path.with_suffix(".tex")
            tex.write_text("\n".join(parts))
            out[f"{path.stem}.tex"] = tex
    for name, path in list(written.items()):
        if Path(path).suffix != ".csv" or Path(path).with_suffix(".md").exists() and \
                f"{Path(path).stem}.tex" in out:
            continue
        try:
            df = pd.read_csv(path)
        except pd.errors.EmptyDataError:   # a table with no rows and no columns yet (no runs)
            df = pd.DataFrame()
        tex = Path(path).with_suffix(".tex")
        tex.write_text(to_latex(df, f"qexp: {Path(path).stem}", Path(path).stem) if len(df.columns) else "")
        out[f"{name}.tex"] = tex
    return out
