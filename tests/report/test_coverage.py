"""Issue 29's counts: measured cells / cells per GLUE table, our rows only, offline tasks apart, seeds per cell
(hand-counted here)."""
import pandas as pd

from qexp.report import coverage


def test_counts_measured_cells_of_our_rows(tmp_path):
    pd.DataFrame({"model": ["minilm_l6", "minilm_l6", "–"], "configuration": ["FP32", "W8A8", "paper only"],
                  "CoLA": ["21.7", "–", "60.0"], "MNLI": ["–", "–", "84.0"], "RTE": ["58.1", "54.2", "70.0"],
                  "n CoLA": ["5", "0", "0"], "n MNLI": ["0", "0", "0"], "n RTE": ["3", "5", "0"]}
                 ).to_csv(tmp_path / "x_table1.csv", index=False)
    pd.DataFrame({"model": ["a"], "perplexity": ["3.0"]}).to_csv(tmp_path / "x_lm.csv", index=False)   # no GLUE
    pd.DataFrame({"model": ["a"], "CoLA": ["1"]}).to_csv(tmp_path / "x_table1_vs_paper.csv", index=False)
    written = coverage.build(tmp_path)
    t = pd.read_csv(written["coverage"], dtype=str)
    assert list(t.table) == ["x_table1"]
    row = t.iloc[0]
    assert row["rows (ours)"] == "2" and row["task columns"] == "3"
    assert row["measured / cells"] == "3 / 6"                 # the paper-only row is not ours
    assert row["measured / offline-task cells"] == "3 / 4"    # MNLI is not offline
    assert row["cells with >= 5 seeds"] == "2" and row["cells with >= 3 seeds"] == "3"
    assert "| x_table1" in written["coverage.md"].read_text()


def test_a_table_without_rows_counts_zero(tmp_path):
    pd.DataFrame(columns=["model", "CoLA", "RTE"]).to_csv(tmp_path / "x_table12.csv", index=False)
    t = pd.read_csv(coverage.build(tmp_path)["coverage"], dtype=str)
    assert t.iloc[0]["measured / cells"] == "0 / 0"
