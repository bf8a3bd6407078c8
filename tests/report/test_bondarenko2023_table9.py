"""Bondarenko et al. 2023 Table 9 from continued-pre-training records: one row per setting with mean ± std [runs]
(hand-computed here), the paper's OPT-1.3B numbers beside ours, no nan, a dirty record marked, stale and
recipe-override records left out with a note, the curves figure written, and the same output twice."""
import pytest

from qexp.experiment.records import run_id
from qexp.report import bondarenko2023_table9 as t9


def _rec(att, recipe, seed, ppl, steps=240, cal=0, inf=100.0, kurt=50.0, wt2=30.0, lam=0.0, dirty=False,
         name="smollm2_135m"):
    mlm = name == "minilm_l6"
    model = {"name": name, "family": "bert" if mlm else "decoder"}
    variant = {"name": att}
    if att == "clipped":
        model["attention"] = {"name": "clipped_alpha", "softmax": "clipped", "alpha": 12, "zeta": 1.0}
        variant = {"name": "clipped", "gamma": -0.09375, "zeta": 1.0}
    elif att != "vanilla":
        model["attention"] = {"name": att, "pi_init": 0.5, "std": 0.001}
    kind = "continue_mlm" if mlm else "continue_clm"
    cfg = {"model": model, "seed": seed, "recipe": {"name": recipe},
           "task": {"kind": kind, "name": kind, "seq_length": 128,
                    "train": {"max_steps": steps, "batch_size": 4, "grad_accum": 1, "learning_rate": 1e-4,
                              "ffn_l2": lam}},
           "calibration": {"seed": cal}}
    rec = {"model": name, "recipe": recipe, "seed": seed, "config": cfg, "run_id": run_id(cfg),
            "attention": variant, "git": {"dirty": dirty},
            "metrics": {"valid": {"perplexity": ppl, "max_inf_norm": inf, "avg_kurtosis": kurt,
                                  "calibration_seed": cal},
                        "wikitext2": {"perplexity": wt2}},
            "pretrain": {"curves": [{"step": 0, "max_inf_norm": inf * 2, "avg_kurtosis": kurt, "perplexity": 60.0},
                                    {"step": steps, "max_inf_norm": inf, "avg_kurtosis": kurt, "perplexity": ppl}]}}
    if mlm:
        del rec["metrics"]["wikitext2"]
        rec["head_warmup"] = {"steps": 500, "curves": [{"step": 0, "perplexity": 9e4}, {"step": 500, "perplexity": 600.0}]}
    return rec


@pytest.fixture
def records():
    recs = [_rec("vanilla", "fp32", 0, 60.0, steps=0, inf=23000.0, kurt=9400.0)]
    recs += [_rec("vanilla", "bq23_w8a8", 0, 900.0 + c, steps=0, cal=c) for c in (0, 1, 2)]
    recs += [_rec("vanilla", "fp32", 0, 40.0, inf=20000.0), _rec("vanilla", "fp32", 1, 42.0, inf=22000.0)]
    recs += [_rec("gated_finetune", "fp32", 0, 41.0, inf=5000.0, dirty=True)]
    recs[-1]["metrics"]["valid"]["gate_factor"] = [[1.0, 0.2], [0.9, 0.3]]
    recs += [_rec("gated_finetune", "bq23_w8a8", 0, 50.0 + c, cal=c) for c in (0, 1)]
    stale = _rec("gated_finetune", "fp32", 1, 1.0)
    stale["run_id"] = "000000000000"
    over = _rec("gated_finetune", "bq23_w8a8", 0, 2.0, cal=2)
    over["overrides"] = ["recipe.quant.weights.bits=4"]
    return recs + [stale, over]


def test_rows_cells_and_the_paper_beside_ours(records, tmp_path):
    written = t9.build(records, tmp_path)
    t, notes = t9.table(t9.frame(records))
    assert list(t.method) == ["before fine-tuning (the pretrained model)", "vanilla fine-tuning",
                              "fine-tuning with gated attention"]
    before, vanilla, gated = (t.iloc[i] for i in range(3))
    assert before["FP ppl (valid)"] == "60.00 [1]" and before["W8A8 ppl (valid)"] == "901.00 ± 1.00 [3]"
    assert before["paper (OPT-1.3B): FP16 ppl"] == "–"
    # mean 41, sample std sqrt(2) = 1.41; inf-norm mean 21000, std 1414.2
    assert vanilla["FP ppl (valid)"] == "41.00 ± 1.41 [2]" and vanilla["max inf-norm"] == "21000.0 ± 1414.2 [2]"
    assert vanilla["paper (OPT-1.3B): FP16 ppl"] == 29.46 and vanilla["paper: avg kurtosis"] == 2086
    assert vanilla["W8A8 ppl (valid)"] == "–" and vanilla["training seeds"] == 2
    assert gated["FP ppl (valid)"] == "41.00 [1]†"                        # the dirty record is marked
    assert gated["W8A8 ppl (valid)"] == "50.50 ± 0.71 [2]"                # the override record is left out
    assert gated["gates: mean factor (min), heads < 0.5"] == "0.600 (0.200), 2 of 4"
    assert vanilla["gates: mean factor (min), heads < 0.5"] == "–"
    assert gated["paper: max inf-norm"] == 50.9 and gated["budget (steps x batch x length)"] == "240 x 4 x 128 tok"
    assert any("run id from older code" in n for n in notes) and any("recipe overrides" in n for n in notes)
    assert any("W8A8 –" in n for n in notes)
    md = written["bondarenko2023_table9.md"].read_text()
    csv = written["bondarenko2023_table9"].read_text()
    assert "nan" not in md.lower() and "nan" not in csv.lower() and "None" not in md + csv
    assert written["bondarenko2023_table9_curves"].stat().st_size > 1000
    assert written["bondarenko2023_table9_gates"].stat().st_size > 1000
    again = tmp_path / "again"
    again.mkdir()
    t9.build(records, again)
    assert (again / "bondarenko2023_table9.md").read_text() == md


def test_rows_never_run_keep_the_paper_numbers_with_a_reason(tmp_path):
    t, notes = t9.table(t9.frame([]))
    assert list(t.method) == ["vanilla fine-tuning", "fine-tuning with gated attention"]
    assert list(t["ours: model"]) == ["–", "–"] and list(t["paper: max inf-norm"]) == [79.3, 50.9]
    assert sum("not run yet" in n for n in notes) == 2


def test_a_regularized_run_is_its_own_row(records):
    recs = records + [_rec("gated_finetune", "fp32", 0, 43.0, lam=0.01)]
    t, _ = t9.table(t9.frame(recs))
    gated = t[t.method == "fine-tuning with gated attention"]
    assert sorted(gated.ffn_l2) == [0.0, 0.01]


def test_the_table9_claims_compare_the_default_rows(records):
    """Lower is better: the gated row's max inf-norm 5000 vs vanilla's mean 21000 (spread 2000) supports the claim;
    the perplexity 41.0 vs 41.0 is a tie (supported: no cost); a regularized gated run is another setting, not used."""
    from qexp.report import claims

    recs = records + [_rec("gated_finetune", "fp32", 0, 100.0, lam=0.01, inf=1e6)]
    c = claims.check_table9(recs).set_index("claim")
    inf = c.loc[claims.TABLE9[0][1]]
    assert inf.verdict == "supported (one seed)" and inf["better [seeds] (spread)"] == "5000.00 [1]"
    assert inf["worse [seeds] (spread)"] == "21000.00 [2] (2000.00)" and inf.difference == -16000.0
    assert c.loc[claims.TABLE9[1][1]].verdict == "tie (one seed)"              # kurtosis 50 vs 50
    assert c.loc[claims.TABLE9[2][1]].verdict.startswith("supported")
    empty = claims.check_table9([])
    assert list(empty.verdict) == ["untested (neither row has run)"] * 3


def test_extra_runs_follow_the_default_row_without_the_paper_numbers(records):
    recs = records + [_rec("gated_finetune", "fp32", 0, 43.0, lam=0.01)]
    recs[-1]["config"]["task"]["train"]["gate_lr"] = None
    fast = _rec("gated_finetune", "fp32", 0, 44.0)
    fast["config"]["task"]["train"]["gate_lr"] = 0.01
    fast["run_id"] = run_id(fast["config"])
    t, notes = t9.table(t9.frame(recs + [fast]))
    gated = t[t.method == "fine-tuning with gated attention"]
    assert list(gated["gate lr"]) == ["= lr", "= lr", 0.01] and list(gated.ffn_l2) == [0.0, 0.01, 0.0]
    assert list(gated["paper: max inf-norm"]) == [50.9, "–", "–"]
    assert sum("targeted extra run" in n for n in notes) == 2


def test_masked_lm_rows_follow_the_decoder_rows_with_their_own_notes(records):
    """MiniLM-L6 (continue_mlm) rows come after SmolLM2's, before / vanilla / gated / clipped; no WikiText-2 cell
    (a masked LM), the clipped row without paper numbers, the head warm-up said once per model."""
    # a MiniLM record first (file names sort minilm_l6 before smollm2_135m): the order is the kinds', not the files'
    recs = [_rec("vanilla", "fp32", 0, 30.0, steps=0, name="minilm_l6")] + records + [
        _rec("clipped", "fp32", 0, 25.0, steps=1200, inf=80.0, name="minilm_l6"),
        _rec("gated_finetune", "fp32", 0, 21.0, steps=1200, inf=150.0, name="minilm_l6"),
        _rec("vanilla", "fp32", 0, 20.0, steps=1200, inf=200.0, name="minilm_l6")]
    t, notes = t9.table(t9.frame(recs))
    mine = t[t["ours: model"] == "minilm_l6"]
    assert list(mine.method) == ["before fine-tuning (the pretrained model)", "vanilla fine-tuning",
                                 "fine-tuning with gated attention", "fine-tuning with clipped softmax (γ -0.09375, ζ 1)"]
    assert t.index[t["ours: model"] == "smollm2_135m"].max() < mine.index.min()
    assert (mine["FP ppl (WikiText-2)"] == "–").all() and list(mine["FP ppl (valid)"]) == \
        ["30.00 [1]", "20.00 [1]", "21.00 [1]", "25.00 [1]"]
    clipped = mine.iloc[3]
    assert clipped["paper (OPT-1.3B): FP16 ppl"] == "–" and clipped["max inf-norm"] == "80.0 [1]"
    assert clipped["gate lr"] == "–" and mine.iloc[2]["gate lr"] == "= lr"   # no gates in clipped softmax
    assert mine.iloc[1]["paper (OPT-1.3B): FP16 ppl"] == 29.46
    assert any("a masked LM has no running-text perplexity" in n for n in notes)
    assert any(n.startswith("minilm_l6: a new MLM head warmed up 500 steps") and "600.0" in n for n in notes)
    assert any("clipped softmax (γ -0.09375, ζ 1): not in the paper's Table 9" in n for n in notes)
