"""One static results page, ``results/index.html`` (issue 32): every table ``qexp tables`` wrote (ours beside the paper,
cells coloured by their delta where a table has one, the notes with the empty-cell reasons), every figure, and links to
the records behind each paper table.  No server: pandas' Styler renders the tables, the figures are the PNGs
matplotlib wrote.  Links are relative to the page, so the folder can be copied or served as it is.
"""
from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd


def _table_html(csv: Path) -> str:
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return "<p>(empty)</p>"
    if not len(df.columns):
        return "<p>(empty)</p>"
    styler = df.style.hide(axis="index").set_uuid(csv.stem)   # fixed element ids: the same page for the same tables
    if "delta" in df.columns:   # ours - paper: green when ours is higher, red when lower (the score's own direction)
        def colour(v):
            try:
                x = float(v)
            except ValueError:
                return ""
            a = min(abs(x) / 10.0, 1.0) * 0.6
            return f"background-color: rgba({'0,160,0' if x > 0 else '200,0,0'},{a:.2f})"
        styler = styler.map(colour, subset=["delta"])
    return styler.to_html()


def _notes(md: Path) -> str:
    text = md.read_text()
    keep = [line for line in text.splitlines() if line.startswith("- ") or line.startswith("Empty cells")]
    return "<ul>" + "".join(f"<li>{html.escape(line.lstrip('- '))}</li>" for line in keep) + "</ul>" if keep else ""


def build(results_dir: Path, tables_dir: Path, records: dict[str, list[str]] | None = None) -> Path:
    """Write ``results_dir/index.html``; ``records``: table name -> the record paths behind its cells."""
    results_dir, tables_dir = Path(results_dir), Path(tables_dir)
    rel = os.path.relpath(tables_dir, results_dir)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>qexp results</title><style>"
             "body{font-family:sans-serif;max-width:1400px;margin:auto} table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 5px} h2{margin-top:2em} img{max-width:700px}</style></head><body>",
             "<h1>qexp results</h1><p>Every table and figure of <code>qexp tables</code>, built from the run records "
             "(<code>results/runs</code>). Cells: ours [seeds] (paper); – with the reason in the notes.</p>"]
    csvs = sorted(tables_dir.glob("*.csv"))
    parts.append("<h2>Tables</h2><ul>" + "".join(f"<li><a href='#{c.stem}'>{c.stem}</a></li>" for c in csvs) + "</ul>")
    for csv in csvs:
        md = csv.with_suffix(".md")
        vs = tables_dir / f"{csv.stem}_vs_paper.csv"
        parts.append(f"<h2 id='{csv.stem}'>{csv.stem}</h2><p>files: <a href='{rel}/{csv.name}'>CSV</a>"
                     + (f" · <a href='{rel}/{md.name}'>Markdown</a>" if md.exists() else "")
                     + (f" · <a href='{rel}/{csv.stem}.tex'>LaTeX</a>" if (tables_dir / f"{csv.stem}.tex").exists()
                        else "") + "</p>")
        parts.append(_table_html(vs if vs.exists() and not csv.stem.endswith("_vs_paper") else csv))
        if md.exists():
            parts.append(_notes(md))
        behind = (records or {}).get(csv.stem)
        if behind:
            links = " ".join(f"<a href='{html.escape(os.path.relpath(p, results_dir))}'>{html.escape(Path(p).name)}</a>"
                             for p in sorted(behind))
            parts.append(f"<details><summary>{len(behind)} record(s) behind these cells</summary>{links}</details>")
    pngs = sorted(tables_dir.glob("*.png"))
    parts.append("<h2 id='figures'>Figures</h2>")
    parts += [f"<figure><img src='{rel}/{p.name}' alt='{p.stem}'><figcaption>{p.stem}</figcaption></figure>"
              for p in pngs]
    parts.append("</body></html>")
    out = results_dir / "index.html"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(out)
    return out
