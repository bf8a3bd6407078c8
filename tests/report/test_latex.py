"""Every table also as LaTeX (issue 14): booktabs rules, escaped text, the Markdown rendering's "ours (paper)" cells."""
import pandas as pd

from qexp.report.latex import markdown_tables, to_latex, write_latex_for

MD = """Table 1: W8A8 PTQ. Cells: ours (paper).

model: minilm_l6

| configuration | RTE | seeds |
|---|---|---|
| FP32 | 56.32 (70.40) | 1 |
| W8A8 | – (64.98) | 0 |

Second table

| a_b | c |
|---|---|
| x | 1 |
"""


def test_markdown_tables_keep_cells_and_captions():
    (cap1, t1), (cap2, t2) = markdown_tables(MD)
    assert cap1 == "Table 1: W8A8 PTQ. Cells: ours (paper). model: minilm_l6" and cap2 == "Second table"
    assert list(t1.columns) == ["configuration", "RTE", "seeds"] and t1.iloc[0].tolist() == ["FP32", "56.32 (70.40)", "1"]
    assert list(t2.columns) == ["a_b", "c"]


def test_latex_has_booktabs_and_escapes():
    tex = to_latex(pd.DataFrame({"model_name": ["minilm_l6"], "score %": [56.3249], "x": [None]}), "cap_1", "t")
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "minilm\\_l6" in tex and "model\\_name" in tex and "score \\%" in tex and "56.32" in tex
    assert "nan" not in tex and "\\caption{cap\\_1}" in tex


def test_every_written_table_gets_a_tex(tmp_path):
    csv, md = tmp_path / "t.csv", tmp_path / "t.md"
    pd.DataFrame({"a": [1.0]}).to_csv(csv, index=False)
    md.write_text(MD)
    other = tmp_path / "u.csv"
    pd.DataFrame({"paper_x": [2.0], "ours_x": [1.0]}).to_csv(other, index=False)
    out = write_latex_for({"t": csv, "t.md": md, "u": other})
    assert sorted(p.name for p in out.values()) == ["t.tex", "u.tex"]
    assert "56.32 (70.40)" in (tmp_path / "t.tex").read_text()       # from the Markdown rendering
    assert "paper\\_x" in (tmp_path / "u.tex").read_text()
