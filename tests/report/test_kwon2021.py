"""Kwon et al. 2021 tables from hand-made records: which run lands in which cell (means over seeds, the best manual
set by test score, the uniform baseline's row), and the search-trace figure."""
import pandas as pd
import pytest

from qexp.report import kwon2021


def rec(recipe, score, bits=3, seed=0, rounds=15, E=0.0, C=1.0, P=0.0, set_=None, search=None, group_size=None,
        enabled=True, train=(0.5, 80.0), mse=1e-4, scheme="bcq"):
    bcq = {"enabled": enabled, "scheme": scheme, "rounds": rounds, "E": E, "C": C, "P": P, "group_size": group_size}
    if set_ is not None:
        bcq["set"] = set_
    out = {"model": "minilm_l6", "task": "mrpc", "recipe": recipe, "seed": seed, "score": score,
           "finished": f"2026-12-06T00:00:{seed:02d}",
           "config": {"recipe": {"name": recipe, "paper": "kwon2021", "quant": {"weights": {"bits": bits}},
                                 "bcq": bcq}},
           "train_objective": {"loss": train[0], "metric": train[1], "weight_mse": mse}}
    if enabled:
        out["bcq"] = {"layers": [{"mse": mse, "avg_alpha": None if scheme != "bcq" else 0.02}], "seconds": 1.0}
    if search:
        out["bcq"]["search"] = search
    return out


@pytest.fixture
def records():
    trace = [{"trial": 0, "objective": 0.9}, {"trial": 1, "objective": 0.7}, {"trial": 2, "objective": 0.8}]
    bo = {"mode": "model", "objective": "loss", "direction": "minimize", "trials": trace,
          "data": {"samples": 256}, "best": {"params": {"E": 0.8, "C": 0.99, "P": 0.01}},
          "seconds_per_trial": {"quantize_mean": 10.0, "evaluate_mean": 2.0}}
    return [
        rec("pwq_uniform", 60.0, enabled=False), rec("pwq_uniform", 62.0, seed=1, enabled=False),
        rec("pwq_greedy", 50.0, rounds=0), rec("pwq_alternating", 70.0),
        rec("pwq_alternating_weighted", 72.0, E=1.0),
        rec("pwq_manual", 71.0, E=1.0, C=0.99, set_=2), rec("pwq_manual", 75.0, E=0.0, P=0.05, set_=10),
        rec("pwq_manual", 40.0, bits=2, E=1.0, C=0.99, set_=2),
        rec("pwq_bo_model", 76.0, search=bo),
        rec("pwq_alternating", 68.0, group_size=128),
        rec("pwq_uniform_mse", 63.0, scheme="uniform_weighted_mse"),
        {"model": "x", "task": "y", "recipe": "w8a8_ptq", "seed": 0, "score": 1.0, "config": {"recipe": {}}},
    ]


def test_frame_keeps_the_kwon_runs_only(records):
    df = kwon2021.frame(records)
    assert len(df) == 11 and set(df.method) == {"uniform", "uniform (MSE step)", "greedy", "alternating"}


def test_table1_means_over_seeds_and_rows_per_method(records):
    t = kwon2021.table1(kwon2021.frame(records), 3)
    uni = t[t.method.str.startswith("Uniform")].iloc[0]
    assert uni.score == pytest.approx(61.0) and uni.seeds == 2 and uni.mse == pytest.approx(1e-4)
    assert set(t.method) == {"Uniform (RTN, min-max per row)", "Uniform (RTN, MSE step; ours)", "Greedy, unweighted",
                             "Alternating, unweighted", "Alternating, weighted (E = 1)"}   # no set, group size, search


def test_table3_takes_the_best_manual_set_by_test_score(records):
    t = kwon2021.table3(kwon2021.frame(records)).set_index("method")
    assert t.loc["Alternating + importance (best manual set)", "minilm_l6/mrpc 3-bit"] == 75.0
    assert t.loc["Alternating + importance (best manual set)", "minilm_l6/mrpc 2-bit"] == 40.0
    assert t.loc["Alternating + importance (model-wise BO)", "minilm_l6/mrpc 3-bit"] == 76.0
    assert t.loc["Alternating", "minilm_l6/mrpc 3-bit"] == 70.0   # the group-size run is Table 7's, not here
    assert t.loc["Uniform, MSE step (ours)", "minilm_l6/mrpc 3-bit"] == 63.0
    assert pd.isna(t.loc["Alternating + importance (layer-wise BO, 'Ours')", "minilm_l6/mrpc 3-bit"])
    assert "bert_base (paper model)" in t.columns


@pytest.mark.parametrize("kind", ["perplexity", "pretrain_clm", "pretrain_mlm"])
def test_a_perplexity_score_picks_the_lowest_manual_set(kind):
    recs = [rec("pwq_manual", 210.0, E=1.0, set_=2), rec("pwq_manual", 205.0, P=0.05, set_=10),
            rec("pwq_manual", 230.0, C=0.99, set_=3)]
    for r in recs:
        r.update(model="gpt2_cpu", task="qpt_clm")
        r["config"]["task"] = {"kind": kind}
    t = kwon2021.table3(kwon2021.frame(recs)).set_index("method")
    assert t.loc["Alternating + importance (best manual set)", "gpt2_cpu/qpt_clm 3-bit"] == 205.0


def test_table2_rows_are_the_settings(records):
    t = kwon2021.table_ecp(kwon2021.frame(records), 3).set_index("E, C, P")
    assert t.loc["set 10: E=0, C=1, P=0.05", "minilm_l6/mrpc"] == 75.0
    assert t.loc["E=0, C=1, P=0", "minilm_l6/mrpc"] == 70.0


def test_search_table_and_trace_figure(records, tmp_path):
    df = kwon2021.frame(records)
    s = kwon2021.table_search(df)
    row = s[s.search == "model-wise BO"].iloc[0]
    assert row.setting == "E=0.800, C=0.9900, P=0.010" and row.trials == 3 and row.score == 76.0
    assert s[s.search.str.startswith("manual") & (s.bits == 3)].iloc[0].setting == "set 10: E=0, C=1, P=0.05"
    t4 = kwon2021.table4(df).iloc[0]
    assert (t4.samples, t4.max_trials, t4["quantize_s_per_trial (newest run)"]) == (256, 3, 10.0)
    written = kwon2021.build(records, tmp_path)
    assert (tmp_path / "kwon2021_search_trace_minilm_l6_mrpc_3bit_loss.png").stat().st_size > 1000
    assert "kwon2021_table5" in written and len(pd.read_csv(written["kwon2021_table5"])) == 16


def test_table7_rows_are_group_sizes_per_bit_width(records):
    extra = [rec("pwq_alternating", 66.0, group_size=32), rec("pwq_alternating", 64.0, group_size=32, seed=1),
             rec("pwq_alternating", 80.0, bits=4, group_size=32),
             rec("pwq_alternating_weighted", 90.0, E=1.0, group_size=32)]   # weighted: not Table 7's
    t = kwon2021.table7(kwon2021.frame(records + extra))
    assert [(r.bits, r.group, r.score, r.seeds) for r in t.itertuples()] == \
        [(3, "32", 65.0, 2), (3, "128", 68.0, 1), (3, "one row", 70.0, 1), (4, "32", 80.0, 1)]


def test_a_longer_search_supersedes_a_shorter_one_and_objectives_stay_apart(records):
    """Table 3 shows the loss-objective search with the largest budget; Tables 8/9 and 14 keep a row per objective
    (never a mean of a 25- and a 60-trial search, or of the loss and the metric objective)."""
    def layer(score, n, objective="loss", seed=0):
        trace = [{"trial": i, "objective": 1.0 - i / 100} for i in range(n)]
        return rec("pwq_bo_layer", score, seed=seed, search={"mode": "layer", "objective": objective,
                                                             "direction": "minimize", "trials": trace,
                                                             "best": {"params": {"l0.E": 0.5, "l1.E": 1.5}}})
    df = kwon2021.frame(records + [layer(80.0, 25), layer(84.0, 60), layer(86.0, 60, seed=1),
                                   layer(70.0, 60, "metric")])
    t3 = kwon2021.table3(df).set_index("method")
    assert t3.loc["Alternating + importance (layer-wise BO, 'Ours')", "minilm_l6/mrpc 3-bit"] == 85.0
    s = kwon2021.table_search(df)
    lw = s[s.search == "layer-wise BO"].set_index("objective")
    assert lw.loc["loss", "score"] == 85.0 and lw.loc["loss", "trials"] == 60 and lw.loc["loss", "seeds"] == 2
    assert lw.loc["metric", "score"] == 70.0 and lw.loc["loss", "setting"] == "2 layers; E 0.50..1.50"
    t14 = kwon2021.table14(df).set_index(["search", "objective"])
    assert t14.loc[("layer", "loss"), "score"] == 85.0 and t14.loc[("layer", "metric"), "score"] == 70.0
    assert t14.loc[("model", "loss"), "score"] == 76.0
