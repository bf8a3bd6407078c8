"""Chitsaz et al. 2024 tables from qpt_clm records: ours (means over seeds, hand-computed) beside the paper's row, a
diverged run is a status and never a number, other papers' pre-training runs stay out, figures are written."""
import math

import pandas as pd

from qexp.report import bondarenko2023 as b23
from qexp.report import chitsaz2024 as c24


def _rec(recipe, seed, loss, wt2, ptb, diverged=None, paper="chitsaz2024", rte=None):
    curves = [{"step": 0, "loss": 8.0}, {"step": 100, "loss": loss or 9.0}]
    return {"model": "gpt2_cpu", "recipe": recipe, "seed": seed,
            "config": {"model": {"name": "gpt2_cpu", "arch": "opt",
                                 "architecture": {"num_hidden_layers": 4, "hidden_size": 256}},
                       "task": {"name": "qpt_clm", "kind": "pretrain_clm", "paper": paper, "seq_length": 128,
                                "train": {"max_steps": 800, "batch_size": 16}}},
            "metrics": ({"valid": {"diverged": diverged}} if diverged else
                        {"valid": {"loss": loss, "perplexity": math.exp(loss)}, "wikitext2": {"perplexity": wt2},
                         "ptb": {"perplexity": ptb},
                         "downstream": {"qexp_glue_rte_local": {"acc": rte}} if rte is not None else {}}),
            "pretrain": {"curves": curves, "diverged": diverged}}


def _records():
    return [_rec("fp32", 0, 4.0, 100.0, 120.0), _rec("fp32", 1, 4.2, 110.0, 130.0),
            _rec("qpt_w8_channel", 0, 4.1, 104.0, 121.0, rte=0.5), _rec("qpt_w8_channel", 1, 4.3, 112.0, 135.0, rte=0.6),
            _rec("qpt_g4_tensor", 0, None, None, None, diverged={"step": 37, "reason": "non-finite training loss"})]


def test_rows_put_ours_beside_the_paper():
    t = c24.tables(c24.frame(_records()))
    row = t[(t.table == 2) & (t.recipe == "qpt_w8_channel")].iloc[0]
    assert row.seeds == 2 and row.status == "ok"
    assert math.isclose(row.ours_wikitext2, 108.0) and math.isclose(row.ours_ptb, 128.0)
    assert math.isclose(row.ours_val_loss, 4.2)
    assert math.isclose(row.ours_wikitext2_vs_baseline, 108.0 / 105.0)
    assert row.paper_wikitext2 == 35.94 and row.paper_wikitext103 == 42.43      # Table 2, 8-bit per-channel
    assert math.isclose(row.paper_wikitext2_vs_baseline, 35.94 / 34.32)
    assert pd.isna(row.ours_wikitext103) and "not on this machine" in row.note
    assert t[(t.table == 5) & (t.recipe == "qpt_m1_4_tensor")].iloc[0].status == "not run"


def test_a_diverged_run_is_a_status_not_a_number():
    t = c24.tables(c24.frame(_records()))
    row = t[t.recipe == "qpt_g4_tensor"].iloc[0]
    assert row.status == "diverged at step 37 (non-finite training loss)"
    assert pd.isna(row.ours_wikitext2) and pd.isna(row.ours_val_loss)
    md = c24.markdown(t)
    assert "diverged at step 37" in md and "nan" not in md     # empty cells, the status says why


def test_other_pretraining_runs_stay_in_their_own_tables():
    recs = _records() + [_rec("fp32", 0, 4.0, 1.0, 1.0, paper=None)]
    assert len(c24.frame(recs)) == 5
    assert len(b23.frame(recs)) == 1    # only the record that is not a Chitsaz et al. run


def test_another_papers_recipe_and_a_partial_held_out_evaluation_stay_out():
    kwon = _rec("pwq_alternating", 0, 4.5, 150.0, 160.0)
    kwon["config"]["recipe"] = {"name": "pwq_alternating", "paper": "kwon2021"}
    quick = _rec("fp32", 0, 4.0, 90.0, 95.0)      # the same trained model, 200 held-out windows: newer, not better
    quick["config"]["task"]["heldout_limit"] = {"windows": 200}
    quick["finished"] = "2099-01-01"
    df = c24.frame(_records() + [kwon, quick])
    assert len(df) == 5 and "pwq_alternating" not in set(df.recipe)
    t = c24.tables(df)
    assert math.isclose(t[(t.table == 2) & (t.recipe == "fp32")].iloc[0].ours_wikitext2, 105.0)


def test_figures_are_written(tmp_path):
    written = c24.build(_records(), tmp_path)
    figs = sorted(k for k in written if "figure" in k)
    h = c24._setting(_records()[0]["config"])
    # a figure where the baseline and at least one of its variants ran: Figure 4 (seeds 0, 1), Figure 9 (seed 0)
    assert figs == [f"chitsaz2024_figure4_{h}_seed0", f"chitsaz2024_figure4_{h}_seed1", f"chitsaz2024_figure9_{h}_seed0"]
    assert all(written[f].stat().st_size > 0 for f in figs)
    assert (tmp_path / "chitsaz2024_tables_vs_paper.csv").exists()


def test_downstream_rows_average_the_seeds_per_task():
    t = c24.downstream_tables(c24.frame(_records()))
    row = t[(t.table == 6) & (t.recipe == "qpt_w8_channel")].iloc[0]
    assert math.isclose(row.ours_rte, 55.0) and pd.isna(row.ours_mrpc)      # (50 + 60) / 2; MRPC did not run
    assert math.isclose(row.ours_average_of_run_tasks, 55.0)
    assert row.paper_rte == 53.07 and row.paper_average == 44.10


def test_a_re_evaluation_of_the_same_run_is_not_a_second_seed():
    old, new = _rec("fp32", 0, 4.0, 100.0, 120.0), _rec("fp32", 0, 4.0, 90.0, 120.0)
    old["finished"], new["finished"], old["_path"] = "2026-01-01", "2026-01-02", "old.json"
    import pytest

    with pytest.warns(UserWarning, match=r"1 older record\(s\).*old.json"):
        df = c24.frame([old, new])
    assert len(df) == 1 and df.wikitext2.iloc[0] == 90.0


def test_a_run_worse_than_its_initialisation_is_flagged():
    rec = _rec("qpt_m2_8_channel", 0, 30.0, 1e13, 1e13)     # curves start at 8.0
    assert c24.frame([rec]).status.iloc[0] == "exploded: final validation loss 30 > 8 at step 0"


def test_a_run_that_blew_up_and_partly_recovered_is_flagged():
    rec = _rec("qpt_m2_8_channel", 0, 6.0, 500.0, 600.0)      # final 6.0 < 8.0 at step 0, but 40.0 at step 100
    rec["pretrain"]["curves"] = [{"step": 0, "loss": 8.0}, {"step": 100, "loss": 40.0}, {"step": 200, "loss": 6.0}]
    assert c24.frame([rec]).status.iloc[0] == ("exploded: validation loss 40 at step 100 > 8 at step 0; "
                                               "final 6")
    ok = _rec("qpt_w8_channel", 0, 4.0, 100.0, 120.0)
    ok["pretrain"]["curves"] = [{"step": 0, "loss": 8.0}, {"step": 100, "loss": 7.9}, {"step": 200, "loss": 4.0}]
    assert c24.frame([ok]).status.iloc[0] == "ok"



def test_left_out_runs_are_explained_not_called_missing():
    """Issue 27 #20 / #2: "no qpt_clm runs yet" when runs existed but were left out; a record with recipe overrides
    replaced the recipe's row (`exclude=[*]`: 0 quantized layers, recorded as qpt_w8a8)."""
    from qexp.report.chitsaz2024 import frame, markdown, tables

    def rec(**task):
        return {"model": "gpt2_cpu", "recipe": "qpt_w8a8", "seed": 0, "metrics": {}, "finished": "x",
                "overrides": ["+recipe=qpt_w8a8", "recipe.qpt.exclude=[*]"] if task.pop("override", False) else [],
                "config": {"model": {"name": "gpt2_cpu"}, "task": {"paper": "chitsaz2024", **task},
                           "recipe": {"name": "qpt_w8a8"}}}

    df = frame([rec(heldout_limit={"windows": 4}), rec(override=True)])
    assert df.empty
    md = markdown(tables(df))
    assert "records exist but were left out" in md and "heldout_limit" in md and "recipe.qpt.exclude=[*]" in md
