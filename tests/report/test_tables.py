"""Tables are a pure function of the records: synthetic records in, the paper's layout out."""
import json

import pandas as pd
import pytest

from qexp.experiment.records import SCHEMA
from qexp.report.tables import build_all



def read(path, **kw):
    """A results table as numbers: empty cells are written "–" (issue 29: never nan/None)."""
    return pd.read_csv(path, na_values=["–"], **kw)


def write(runs, model, task, recipe, seed, score, calibration="default", finished="2026-12-01", git=None,
          overrides=None, **metrics):
    rec = {"schema": SCHEMA, "model": model, "task": task, "recipe": recipe, "seed": seed, "score": score,
           "metrics": metrics, "config": {"seed": seed, "calibration": calibration, "recipe": {
               "name": recipe}}, "finished": finished, "git": git or {"commit": "abc", "dirty": False},
           "overrides": overrides or [f"+recipe={recipe}"]}
    (runs / f"{model}_{task}_{recipe}_{seed}.json").write_text(json.dumps(rec))


def test_table1_layout_median_and_paper_deltas(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, s in enumerate([60.0, 70.0, 65.0]):  # median 65
        write(runs, "minilm_l6", "rte", "fp32", seed, s)
    write(runs, "minilm_l6", "rte", "w8a8_ptq", 0, 50.0)
    write(runs, "minilm_l6", "rte", "w8a8_ptq", 1, 54.0)  # median of two: 52
    write(runs, "minilm_l6", "mrpc", "fp32", 0, 80.0)
    (runs / "not_a_record.json").write_text(json.dumps({"schema": 999}))
    build_all(runs, tmp_path / "tables")
    wide = read(tmp_path / "tables" / "bondarenko2021_table1.csv")
    assert list(wide.columns) == ["model", "configuration", "CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI",
                                  "RTE", "GLUE", "n CoLA", "n SST-2", "n MRPC", "n STS-B", "n QQP", "n MNLI",
                                  "n QNLI", "n RTE", "dirty"]
    assert list(wide.configuration) == ["FP32", "W8A8", "W32A8", "W8A32"]
    fp = wide.set_index("configuration").loc["FP32"]
    assert fp.RTE == 65.0 and fp.MRPC == 80.0 and pd.isna(fp.CoLA) and pd.isna(fp.GLUE)  # missing cells stay empty
    assert wide.set_index("configuration").loc["W8A8"].RTE == 52.0
    assert wide.set_index("configuration").loc["W32A8"].isna()[["RTE", "GLUE"]].all()
    long = read(tmp_path / "tables" / "bondarenko2021_table1_vs_paper.csv")
    cell = long[(long.configuration == "FP32") & (long.column == "RTE")].iloc[0]
    assert cell.paper == 70.40 and cell.delta == pytest.approx(65.0 - 70.40) and cell.seeds == 3
    md = (tmp_path / "tables" / "bondarenko2021_table1.md").read_text()
    assert "| FP32 |" in md and "65.00 [3] (70.40)" in md and "| W32A8 | – (56.70)" in md


def test_glue_score_only_when_all_eight_tasks_exist(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    tasks = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]
    for i, t in enumerate(tasks):
        write(runs, "bert_base", t, "w8a32_ptq", 0, 80.0 + i)
    build_all(runs, tmp_path / "tables")
    wide = read(tmp_path / "tables" / "bondarenko2021_table1.csv").set_index("configuration")
    assert wide.loc["W8A32"].GLUE == pytest.approx(sum(80.0 + i for i in range(8)) / 8)


def test_a_missing_or_empty_runs_folder_is_refused_and_writes_nothing(tmp_path):
    """Issue 27 #1: `qexp tables --runs results/run` (a typo) wrote 118 empty tables over the committed ones."""
    from qexp.report.tables import TablesError

    out = tmp_path / "tables"
    out.mkdir()
    (out / "bondarenko2021_table1.md").write_text("committed")
    with pytest.raises(TablesError, match="'.*none' is not a folder"):
        build_all(tmp_path / "none", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TablesError, match="holds no readable run record; refusing to overwrite"):
        build_all(tmp_path / "empty", out)
    assert [p.name for p in out.iterdir()] == ["bondarenko2021_table1.md"]
    assert (out / "bondarenko2021_table1.md").read_text() == "committed"


def test_a_bad_score_is_skipped_and_a_failing_builder_leaves_the_old_tables(tmp_path, monkeypatch, caplog):
    """Issue 27 #1: a string score crashed the build after 44 of 118 files were rewritten.  Now the record is skipped
    with a warning, and a builder that fails part-way leaves every previous table as it was (all or nothing)."""
    from qexp.report import kwon2021

    runs, out = tmp_path / "runs", tmp_path / "tables"
    runs.mkdir()
    write(runs, "minilm_l6", "rte", "fp32", 0, 60.0)
    write(runs, "minilm_l6", "rte", "fp32", 1, "55.1")
    with caplog.at_level("WARNING"):
        build_all(runs, out)
    assert "its score '55.1' is not a number" in caplog.text
    assert read(out / "bondarenko2021_table1_vs_paper.csv").query("configuration == 'FP32' and column == "
                                                                          "'RTE'").seeds.iloc[0] == 1
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write(runs, "minilm_l6", "rte", "fp32", 2, 70.0)
    monkeypatch.setattr(kwon2021, "build", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        build_all(runs, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tables-building")]   # no temporary left


def test_label_free_table(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for rec, err in [("w8a8_ptq", 0.5), ("fp32", 0.0)]:
        write(runs, "minilm_l6", "text_outliers", rec, 0, 100 * err, final_rel_error=err, mean_site_rel_error=err / 2,
              max_site_rel_error=err, max_site_rel_error_site="encoder.layer.5.output", max_inf_norm=200.0,
              avg_kurtosis=8000.0)
    build_all(runs, tmp_path / "tables")
    t = read(tmp_path / "tables" / "text_outliers.csv")
    assert list(t.recipe) == ["fp32", "w8a8_ptq"] and t["final rel. error %"].tolist() == [0.0, 50.0]


def test_a_cell_never_pools_configurations_the_newest_supersedes(tmp_path):
    """Issue 29: 2021 T6 MRPC MP-PTQ 85.28 was the median of two records with different calibrations (neither
    record had that value).  Now the newest configuration fills the cell and the notes say what it superseded."""
    runs = tmp_path / "runs"
    runs.mkdir()
    write(runs, "m", "rte", "w8a8_ptq", 0, 50.0, calibration="default", finished="2026-12-01")
    write(runs, "m", "rte", "w8a8_ptq", 1, 60.0, calibration="mse", finished="2026-12-02")
    build_all(runs, tmp_path / "tables")
    t1 = read(tmp_path / "tables" / "bondarenko2021_table1.csv").set_index("configuration")
    assert t1.loc["W8A8"].RTE == 60.0 and t1.loc["W8A8", "n RTE"] == 1   # not the pooled 55.0
    md = (tmp_path / "tables" / "bondarenko2021_table1.md").read_text()
    assert "1 record(s) of 1 older configuration(s) superseded" in md


def test_seeds_are_per_cell_and_a_nan_score_is_not_a_seed(tmp_path):
    """Issue 29: the seeds column showed the row minimum; issue 27 #8: a NaN score counted as a seed."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed in range(3):
        write(runs, "m", "rte", "fp32", seed, 60.0 + seed)
    write(runs, "m", "rte", "fp32", 3, float("nan"))
    write(runs, "m", "mrpc", "fp32", 0, 80.0)
    build_all(runs, tmp_path / "tables")
    t1 = read(tmp_path / "tables" / "bondarenko2021_table1.csv").set_index("configuration")
    assert (t1.loc["FP32", "n RTE"], t1.loc["FP32", "n MRPC"], t1.loc["FP32", "RTE"]) == (3, 1, 61.0)
    md = (tmp_path / "tables" / "bondarenko2021_table1.md").read_text()
    assert "| FP32 | – (57.27) | – (93.12) | 80.00 [1] (88.36) |" in md and "61.00 [3] (70.40)" in md


def test_a_dirty_record_is_flagged_in_its_cell(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    write(runs, "m", "rte", "fp32", 0, 60.0)
    write(runs, "m", "mrpc", "fp32", 0, 80.0, git={"commit": "abc", "dirty": True})
    build_all(runs, tmp_path / "tables")
    md = (tmp_path / "tables" / "bondarenko2021_table1.md").read_text()
    assert "80.00 [1]† (88.36)" in md and "60.00 [1] (70.40)" in md and "†: a record from a dirty tree" in md
    assert read(tmp_path / "tables" / "bondarenko2021_table1.csv").dirty.tolist()[0] == "MRPC"


def test_a_recipe_run_with_overrides_never_fills_the_recipe_row(tmp_path):
    """Issue 27 #2 / 29: `w8a8_ptq` runs at bits 4, 6 and 8 were pooled into the W8A8 cell."""
    runs = tmp_path / "runs"
    runs.mkdir()
    write(runs, "m", "rte", "w8a8_ptq", 0, 60.0, overrides=["+recipe=w8a8_ptq"])
    write(runs, "m", "rte", "w8a8_ptq", 1, 20.0, overrides=["+recipe=w8a8_ptq", "recipe.quant.activations.bits=4"],
          finished="2099-01-01")
    build_all(runs, tmp_path / "tables")
    t1 = read(tmp_path / "tables" / "bondarenko2021_table1.csv").set_index("configuration")
    assert t1.loc["W8A8"].RTE == 60.0 and t1.loc["W8A8", "n RTE"] == 1
    assert "run with `recipe.quant.activations.bits=4` left out" in (tmp_path / "tables" /
                                                                      "bondarenko2021_table1.md").read_text()


def test_no_table_file_holds_nan_or_none(tmp_path):
    """Issue 29: no nan/None in any CSV, Markdown or LaTeX cell; an empty cell is "–" and the table says why."""
    runs = tmp_path / "runs"
    runs.mkdir()
    write(runs, "m", "rte", "fp32", 0, 60.0)
    build_all(runs, tmp_path / "tables")
    import re

    for path in (tmp_path / "tables").iterdir():
        if path.suffix in (".csv", ".md", ".tex"):
            text = path.read_text()
            assert not re.search(r"(^|[,|&]\s*)(nan|None|NaN)\s*($|[,|&\\])", text, re.M), path.name
    md = (tmp_path / "tables" / "bondarenko2021_table1.md").read_text()
    assert "Empty cells (–) in QQP: QQP is not offline here" in md and "in CoLA: not run yet" in md


def test_one_recipe_serves_several_tables(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    write(runs, "m", "rte", "w8a8_ptq", 0, 61.0)
    write(runs, "m", "rte", "fp32", 0, 66.0)
    build_all(runs, tmp_path / "tables")
    t1 = read(tmp_path / "tables" / "bondarenko2021_table1.csv").set_index("configuration")
    t4 = read(tmp_path / "tables" / "bondarenko2021_table4.csv").set_index("configuration")
    t5 = read(tmp_path / "tables" / "bondarenko2021_table5.csv").set_index("configuration")
    assert t1.loc["W8A8"].RTE == t4.loc["W8A8 PTQ"].RTE == t5.loc["1 (= per-tensor)"].RTE == 61.0
    assert list(t4.columns) == ["model", "STS-B", "MNLI", "QNLI", "RTE", "n STS-B", "n MNLI", "n QNLI", "n RTE",
                                "dirty"]
    assert list(t5.index) == ["FP32", "1 (= per-tensor)", "768 (= per-embd.)", "768 (only FFN)*", "6 (only FFN)",
                              "3 (only FFN)", "3 + P (only FFN)", "6 + P (only FFN)"]
    vs = read(tmp_path / "tables" / "bondarenko2021_table5_vs_paper.csv")
    assert vs[(vs.configuration == "6 + P (only FFN)") & (vs.column == "RTE")].paper.iloc[0] == 69.31


def test_every_table_row_names_an_existing_recipe():
    from qexp.cli import conf_dir
    from qexp.report.tables import TABLES

    recipes = {p.stem for p in (conf_dir() / "recipe").glob("*.yaml")}
    for spec in TABLES:
        ref = pd.read_csv(__import__("qexp.report.tables", fromlist=["REFERENCE"]).REFERENCE / f"{spec.name}.csv")
        assert [label for label, _ in spec.rows] + list(spec.literature) == list(ref.configuration)
        assert {recipe for _, recipe in spec.rows} <= recipes
    assert {"bondarenko2021_table6", "bondarenko2021_table7", "bondarenko2021_table12"} <= {t.name for t in TABLES}


def test_table7_memory_and_glue_only_when_all_tasks_exist(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    tasks = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]
    for i, t in enumerate(tasks):
        for seed in (0, 1):
            write(runs, "m", t, "w4a32_ptq", seed, 70.0 + i + seed)  # median over seeds: 70.5 + i
    write(runs, "m", "rte", "w6a32_ptq", 0, 60.0)
    for f in runs.glob("*.json"):  # what the runner writes: the reduction from the actual bit-widths
        rec = json.loads(f.read_text())
        rec["memory"] = {"reduction": 7.5 if rec["recipe"] == "w4a32_ptq" else 5.2}
        f.write_text(json.dumps(rec))
    build_all(runs, tmp_path / "tables")
    t7 = read(tmp_path / "tables" / "bondarenko2021_table7.csv").set_index("configuration")
    assert list(t7.columns)[:3] == ["model", "Memory reduction", "GLUE"]  # the paper's layout, then seeds per task
    assert t7.loc["W4A32 PTQ", "GLUE"] == pytest.approx(70.5 + 3.5) and t7.loc["W4A32 PTQ", "Memory reduction"] == 7.5
    assert pd.isna(t7.loc["W6A32 PTQ", "GLUE"]) and t7.loc["W6A32 PTQ", "Memory reduction"] == 5.2
    vs = read(tmp_path / "tables" / "bondarenko2021_table7_vs_paper.csv")
    cell = vs[(vs.configuration == "W4A32 PTQ") & (vs.column == "Memory reduction")].iloc[0]
    assert cell.paper == 8.00 and cell.delta == pytest.approx(-0.5)
    t12 = read(tmp_path / "tables" / "bondarenko2021_table12.csv").set_index("configuration")
    assert t12.loc["Our W4A32 PTQ", "RTE"] == 70.5 + 7 and t12.loc["Our W4A32 PTQ", "GLUE"] == pytest.approx(74.0)


def test_table6_prints_literature_rows_as_reference_only(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    write(runs, "m", "rte", "peg_ptq", 0, 66.0)
    build_all(runs, tmp_path / "tables")
    t6 = read(tmp_path / "tables" / "bondarenko2021_table6.csv").set_index("configuration")
    assert t6.loc["Our W8A8 PEG-PTQ", "RTE"] == 66.0 and "Q8BERT W8A8 PTQ" not in t6.index
    md = (tmp_path / "tables" / "bondarenko2021_table6.md").read_text()
    assert "| Q8BERT W8A8 PTQ | 56.74 | 91.04 | 87.88 | 87.66 | 84.98 | – | 89.34 | 63.32 | 80.13 |" in md


def _search_run(runs, task, seed, score, w, a, bs, nb):
    cal = {"weights": {"name": w}, "activations": {"name": a}, "batch_size": bs, "num_batches": nb, "momentum": 0.9}
    rec = {"schema": SCHEMA, "model": "m", "task": task, "recipe": "estimator_search", "seed": seed, "score": score,
           "metrics": {}, "config": {"seed": seed, "calibration": cal, "recipe": {"name": "estimator_search"}}}
    (runs / f"m_{task}_{w}_{a}_{bs}_{nb}_{seed}.json").write_text(json.dumps(rec))


def test_table9_picks_the_best_median_over_seeds(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    # (mse, current_minmax, bs 1): seeds 60, 70, 62 -> median 62; (minmax, running, 4, 16): 50, 80, 61 -> median 61
    # (its max over seeds is higher, so a best-single-seed rule would pick it: the median rule must not)
    for seed, s in enumerate([60.0, 70.0, 62.0]):
        _search_run(runs, "rte", seed, s, "mse", "current_minmax", 1, 1)
    for seed, s in enumerate([50.0, 80.0, 61.0]):
        _search_run(runs, "rte", seed, s, "current_minmax", "running_minmax", 4, 16)
    for seed, s in enumerate([50.0, 52.0, 51.0]):
        _search_run(runs, "mrpc", seed, s, "mse", "running_minmax", 16, 4)
    _search_run(runs, "mrpc", 0, 49.0, "mse", "mse", 16, 16)
    build_all(runs, tmp_path / "tables")
    t9 = read(tmp_path / "tables" / "bondarenko2021_table9.csv").set_index("Task")
    rte, mrpc = t9.loc["RTE"], t9.loc["MRPC"]
    assert (rte.Weights, rte["Activations (bs, nb)"], rte["median score"]) == ("MSE", "current min-max (1)", 62.0)
    assert rte["paper's choice"] and rte.configurations == 2 and rte.seeds == 3 and rte.tied == 0
    assert mrpc["Activations (bs, nb)"] == "running min-max (16, 4)" and not mrpc["paper's choice"]
    assert mrpc["paper Activations (bs, nb)"] == "running min-max (16, 16)" and mrpc["paper Weights"] == "MSE"
    # the search's runs never leak into Table 1's W8A8 cells
    assert read(tmp_path / "tables" / "bondarenko2021_table1.csv").empty


def test_language_model_cells_never_mix_evaluation_settings():
    """Perplexities on different windows, or from another inference backend, get their own rows (not one median)."""
    from qexp.report.zeroquant import _records, lm_table

    def rec(score, tokens, backend="fake", grid="deepspeed"):
        return {"model": "m", "task": "wikitext2", "recipe": "zq_w8a8", "seed": 0, "score": score,
                "metrics": {"test": {"tokens": tokens, "context_length": 512}}, "inference": {"backend": backend},
                "config": {"task": {"kind": "perplexity"}, "recipe": {"quant": {"grid": grid}}}}

    t = lm_table(_records([rec(23.5, 20440), rec(26.2, 4088), rec(26.1, 4088, "torch_int"),
                           rec(24.0, 20440, grid=None)]), "zeroquant_tableI1")
    assert t[["setting", "ZeroQuant W8A8"]].values.tolist() == [
        ["20440 tokens, context 512", 23.5], ["20440 tokens, context 512; qexp grid", 24.0],
        ["4088 tokens, context 512", 26.2], ["4088 tokens, context 512; backend torch_int", 26.1]]


def test_glue_cells_never_mix_inference_backends():
    """ZeroQuant's GLUE tables: runs of one recipe on another inference backend get their own rows (found pooled into
    one median when the first cpu_int8 records landed)."""
    from qexp.report.spec import TABLE_SPECS
    from qexp.report.zeroquant import _records, glue_table

    def rec(acc, backend):
        return {"model": "m", "task": "rte", "recipe": "zq_w8a8", "seed": 0, "score": 100 * acc,
                "metrics": {"validation": {"accuracy": acc}}, "inference": {"backend": backend},
                "config": {"task": {"kind": "glue"}, "recipe": {"quant": {"grid": "deepspeed"}}}}

    ours, _, _ = glue_table(_records([rec(0.5487, "fake"), rec(0.5523, "torch_int"), rec(0.5523, "cpu_int8")]),
                            TABLE_SPECS.get("zeroquant_tableG5"))
    zq = ours[ours.configuration == "W8A8 (ZeroQuant)"]
    assert zq[["setting", "RTE", "n RTE"]].values.tolist() == [
        ["", "54.87", 1], ["backend cpu_int8", "55.23", 1], ["backend torch_int", "55.23", 1]]


def test_a_table_of_a_model_we_did_not_run_shows_only_the_paper(tmp_path):
    """Issue 29: ZeroQuant E.2/G.6 (BERT-large) repeated E.1/G.5's MiniLM numbers and I.2 (GPT-3 1.3B) I.1's SmolLM2
    numbers under the paper's model headings; an FP baseline landed under "qexp grid" (nan main rows)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for recipe, acc in (("fp32", 0.56), ("zq_w8a8", 0.55)):
        rec = {"schema": SCHEMA, "model": "minilm_l6", "task": "rte", "recipe": recipe, "seed": 0, "score": 100 * acc,
               "metrics": {"validation": {"accuracy": acc}}, "finished": "2026-12-01",
               "config": {"seed": 0, "task": {"kind": "glue"},
                          "recipe": {"name": recipe, **({"quant": {"grid": "deepspeed"}} if recipe != "fp32" else {})}}}
        (runs / f"{recipe}.json").write_text(json.dumps(rec))
    build_all(runs, tmp_path / "tables")
    g6 = (tmp_path / "tables" / "zeroquant_tableG6.md").read_text()
    assert "minilm_l6" not in g6 and "55.00" not in g6 and "BERT-large was not run here" in g6
    g5 = read(tmp_path / "tables" / "zeroquant_tableG5.csv")
    assert g5.setting.isna().all() or set(g5.setting.dropna()) == {"–"}     # FP and ZeroQuant rows share one setting
    assert g5.set_index("configuration").loc["W16A16 (Baseline)", "RTE"] == 56.0


def test_claims_check_states_support_contradiction_and_untested(tmp_path):
    """Issue 29: each claim with supported / contradicted / untested and the cells and seed spread it rests on."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, (w8a32, w32a8) in enumerate([(60.0, 50.0), (62.0, 52.0), (61.0, 51.0)]):
        write(runs, "m", "rte", "w8a32_ptq", seed, w8a32)
        write(runs, "m", "rte", "w32a8_ptq", seed, w32a8)
    write(runs, "m", "rte", "peg_ptq", 0, 50.0)
    write(runs, "m", "rte", "w8a8_ptq", 0, 55.0)
    write(runs, "m", "wikitext2", "w8a32_ptq", 0, 30.0)   # a perplexity, lower is better: not a claim cell
    build_all(runs, tmp_path / "tables")
    c = read(tmp_path / "tables" / "claims.csv")
    t1 = c[c["rests on"] == "Table 1"]
    assert t1.task.tolist() == ["rte"] and t1.verdict.iloc[0] == "supported" and t1.difference.iloc[0] == 10.0
    assert t1["better [seeds] (spread)"].iloc[0] == "61.00 [3] (2.00)"
    peg = c[c["better row"] == "peg_ptq"]
    assert peg.verdict.iloc[0] == "contradicted (one seed)" and peg.difference.iloc[0] == -5.0
    assert c[c["better row"] == "zq_lkd_w48a8"].verdict.iloc[0] == "untested (neither row has run)"


def test_the_results_page_has_every_table_and_figure_and_its_links_resolve(tmp_path):
    """Issue 32: results/index.html -- static, every table and figure, links to the records behind each cell."""
    import re
    from html.parser import HTMLParser

    results = tmp_path / "results"
    runs, out = results / "runs", results / "tables"
    runs.mkdir(parents=True)
    write(runs, "m", "rte", "fp32", 0, 60.0)
    write(runs, "m", "rte", "w8a8_ptq", 0, 50.0)
    written = build_all(runs, out)
    page = written["index.html"]
    assert page == results / "index.html"

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.refs, self.ids = [], set()

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            self.refs += [a[k] for k in ("href", "src") if k in a]
            if "id" in a:
                self.ids.add(a["id"])

    p = Links()
    p.feed(page.read_text())
    for ref in p.refs:
        if ref.startswith("#"):
            assert ref[1:] in p.ids, ref
        else:
            assert (page.parent / ref).exists(), ref
    stems = {c.stem for c in out.glob("*.csv")}
    assert stems <= p.ids and {f"tables/{f.name}" for f in out.glob("*.png")} <= set(p.refs)
    assert any(r.startswith("runs/") and r.endswith(".json") for r in p.refs)   # the records behind the cells
    assert re.search(r"background-color: rgba\(200,0,0", page.read_text())     # W8A8 below the paper: red
    first = page.read_text()
    build_all(runs, out)
    assert page.read_text() == first   # issue 29: the same records give the same page (no random element ids)


def test_one_measured_here_page_per_paper_quotes_its_generated_tables(tmp_path):
    """Issue 32 #2: results/tables/<paper>.md holds every table of that paper as this build wrote it (the docs link
    there instead of copying numbers), its claims, and its figures; every link on the page resolves."""
    import re

    from qexp.report.paper_pages import PAPERS

    runs, out = tmp_path / "runs", tmp_path / "tables"
    runs.mkdir()
    for seed, (fp, q) in enumerate([(60.0, 50.0), (62.0, 51.0)]):
        write(runs, "minilm_l6", "rte", "fp32", seed, fp)
        write(runs, "minilm_l6", "rte", "w8a8_ptq", seed, q)
    written = build_all(runs, out)
    for key in PAPERS:
        assert written[f"{key}.md"] == out / f"{key}.md"
    page = (out / "bondarenko2021.md").read_text()
    t1 = (out / "bondarenko2021_table1.md").read_text()
    assert "| W8A8 |" in t1 and t1.splitlines()[4] in page        # the generated table, verbatim
    assert "61.00 [2]" in page and "## claims" in page
    for link in re.findall(r"\]\(([^)#]+)\)", page):
        assert (out / link).exists() or link.startswith("../../docs/"), link
    assert (tmp_path / "tables" / "zeroquant2022.md").read_text().startswith("# Measured here: ZeroQuant 2022")
    assert "bondarenko2021_table1" not in (out / "kwon2021.md").read_text()   # a page quotes its own paper only


def test_a_file_of_an_earlier_build_that_this_build_does_not_write_is_removed(tmp_path):
    """A figure of a setting whose records were migrated sat in results/tables as if current; other files stay."""
    runs, out = tmp_path / "runs", tmp_path / "tables"
    runs.mkdir()
    write(runs, "minilm_l6", "rte", "fp32", 0, 60.0)
    out.mkdir()
    (out / "chitsaz2024_figure4_oldsetting_seed0.png").write_bytes(b"old")
    (out / "my_notes.txt").write_text("mine")
    with pytest.warns(UserWarning, match="removed 1 file"):
        build_all(runs, out)
    assert not (out / "chitsaz2024_figure4_oldsetting_seed0.png").exists() and (out / "my_notes.txt").exists()
    assert (out / "bondarenko2021_table1.md").exists()


def test_the_quantized_pretraining_summary_is_a_generated_table(tmp_path):
    """Issue 32: the docs pasted the output of scripts/qpt_summary.py; qexp tables now writes it
    (chitsaz2024_summary.md), one row per recipe, the FP32 baseline first, empty cells '–'."""
    from qexp.report import chitsaz2024

    rec = {"model": "gpt2_cpu", "seed": 0, "finished": "2026-12-01", "git": {"commit": "abc", "dirty": False}}
    df = pd.DataFrame([{**rec, "setting": "s1", "scale": "tiny", "recipe": r, "val_loss": v, "wikitext2": w,
                        "ptb": 2 * w, "status": "ok", "downstream": None}
                       for r, v, w in (("qpt_w8a8", 5.1, 110.0), ("fp32", 5.0, 100.0))])
    text = chitsaz2024.summary_markdown(df)
    rows = [l for l in text.splitlines() if l.startswith("| `")]
    assert rows[0].startswith("| `fp32` |") and "| 1.100 |" in rows[1] and rows[1].endswith("| ok | – |")
    assert "nan" not in text and "None" not in text


def test_table_g10_prints_a_setting_only_when_it_has_a_g10_cell():
    """Issue 29: G.10 printed three rows of dashes for every (model, task, setting) whose records carry relative
    errors of other recipes only; a setting with a G.10 recipe keeps all three rows (an empty one says not run)."""
    from qexp.report.zeroquant import _records, table_g10

    def rec(recipe, grid, err):
        return {"model": "minilm_l6", "task": "rte", "recipe": recipe, "seed": 0, "score": 50.0,
                "relative_error": err, "finished": "2026-12-01", "git": {"commit": "abc", "dirty": False},
                "config": {"task": {"kind": "glue"}, "recipe": {"name": recipe, "quant": {"grid": grid}}},
                "overrides": [f"+recipe={recipe}"]}

    recs = [rec("zq_ptq_w8a8", "deepspeed", {"weight": {"8": 0.12}, "activation": {"8": 0.2}}),
            rec("zq_w8a8", "deepspeed", {"weight": {"8": 0.05}, "activation": {"8": 0.1}}),
            rec("zq_w8a8_gq", "qexp", {"weight": {"8": 0.07}})]          # another setting, not a G.10 recipe
    t = table_g10(_records(recs))
    assert set(t.setting) == {""} and len(t) == 3
    row = t.set_index("configuration").loc["Weight, INT8"]
    assert row["Standard Quantization"] == 0.12 and row["GQ or TQ"] == 0.05
    assert pd.isna(t.set_index("configuration").loc["Weight, INT4", "GQ or TQ"])
