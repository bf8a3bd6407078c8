"""Bondarenko et al. 2023 tables from pre-training records: cells are mean +- std (hand-computed here), tokenizers
never share a cell, rows we cannot run keep the paper's numbers with the reason, figures are written."""
import math

import pandas as pd
import pytest

from qexp.report import bondarenko2023 as b23


def _rec(model, arch, att, recipe, seed, ppl, cal=0, inf=10.0, kurt=3.0, tokenizer=("wordpiece_minilm", 30522),
         steps=800):
    per_tensor = {"encoder.layer.0.ffn.residual_sum": {"role": "residual", "inf_norm": inf, "kurtosis": kurt},
                  "encoder.layer.0.output": {"role": "ln_output", "inf_norm": 1.0, "kurtosis": kurt}}
    return {"model": model, "recipe": recipe, "seed": seed, "attention": {"gate": "none", "softmax": "vanilla", **att},
            "tokenizer": {"name": tokenizer[0], "vocab_size": tokenizer[1]},
            "config": {"model": {"name": model, "arch": arch, "attention": att,
                                 "architecture": {"num_hidden_layers": 4, "hidden_size": 128}},
                       "task": {"kind": "pretrain_mlm" if arch == "bert" else "pretrain_clm", "seq_length": 128,
                                "tokenizer": {"name": tokenizer[0]}, "train": {"max_steps": steps, "batch_size": 16}},
                       "calibration": {"seed": cal}},
            "metrics": {"valid": {"perplexity": ppl, "max_inf_norm": inf, "avg_kurtosis": kurt,
                                  "calibration_seed": cal, "per_tensor": per_tensor,
                                  "delimiter_attention": [[0.9, 0.1]],
                                  "attention_maps": {"token_ids": [1, 2], "tokens": ["[CLS]", "."],
                                                     "probs": [[[[1, 0], [0.5, 0.5]], [[0.2, 0.8], [0.1, 0.9]]]]}}},
            "pretrain": {"curves": [{"step": 0, "max_inf_norm": 1.0, "avg_kurtosis": 3.0, "perplexity": 100.0},
                                    {"step": 100, "max_inf_norm": inf, "avg_kurtosis": kurt, "perplexity": ppl}]}}


@pytest.fixture
def records():
    cs = {"softmax": "clipped", "gamma": -0.025, "zeta": 1.0, "name": "clipped"}
    recs = [_rec("bert_cpu", "bert", {"name": "vanilla"}, "fp32", s, ppl, inf=inf, kurt=k)
            for s, ppl, inf, k in ((0, 40.0, 30.0, 50.0), (1, 42.0, 50.0, 70.0))]
    recs += [_rec("bert_cpu", "bert", {"name": "vanilla"}, "bq23_w8a8", s, 100.0 + 10 * s + c, cal=c)
             for s in (0, 1) for c in (0, 1, 2)]
    recs += [_rec("bert_cpu", "bert", cs, "fp32", 0, 39.0, inf=8.0, kurt=4.0),
             _rec("bert_cpu", "bert", cs, "bq23_w8a8", 0, 39.5)]
    # the same model and variant with another tokenizer: a separate row, never pooled
    recs += [_rec("bert_cpu", "bert", {"name": "vanilla"}, "fp32", 0, 80.0, tokenizer=("bpe", 4096))]
    return recs


def test_table2_cells_are_means_and_sample_stds(records):
    st = b23.settings(b23.frame(records))
    wide, long = b23.table2(st)
    van = wide[(wide.paper_model == "BERT") & (wide.method == "vanilla")]
    assert len(van) == 2 and set(van.tokenizer) == {"wordpiece_minilm/30522", "bpe/4096"}
    w = van[van.tokenizer == "wordpiece_minilm/30522"].iloc[0]
    assert w.FP == 41.0 and math.isclose(w.FP_std, math.sqrt(2))            # (40, 42): mean 41, sample std sqrt 2
    assert w.max_inf_norm == 40.0 and math.isclose(w.max_inf_norm_std, math.sqrt(200))
    w8 = [100.0 + 10 * s + c for s in (0, 1) for c in (0, 1, 2)]
    assert math.isclose(w.W8A8, sum(w8) / 6) and math.isclose(w.W8A8_std, pd.Series(w8).std())
    assert w.train_seeds == 2 and w.W8A8_runs == 6
    cs = wide[(wide.paper_model == "BERT") & (wide.method == "clipped softmax")].iloc[0]
    assert cs.FP == 39.0 and pd.isna(cs.FP_std)                              # one seed: no std
    vit = wide[wide.paper_model == "ViT"]
    assert len(vit) == 3 and vit.note.str.contains("no ImageNet").all()
    paper = long[(long.paper_model == "OPT") & (long.method == "gated attention") & (long.column == "FP")].iloc[0]
    assert paper.paper == 15.55 and pd.isna(paper.ours)


def test_non_paper_settings_stay_out_of_table2_but_in_the_sweep(records):
    other = {"softmax": "clipped", "gamma": -0.01, "zeta": 1.0, "name": "clipped"}
    recs = records + [_rec("bert_cpu", "bert", other, "fp32", 0, 38.0)]
    st = b23.settings(b23.frame(recs))
    wide, _ = b23.table2(st)
    assert (wide.FP == 38.0).sum() == 0 and (st.FP == 38.0).sum() == 1


def test_table1_matches_gamma_and_zeta(records):
    t1 = b23.table1(b23.settings(b23.frame(records)))
    row = t1[(t1.gamma == 0) & (t1.zeta == 1) & (t1.model == "bert_cpu")]
    assert len(row) == 2 and row.paper_FP.iloc[0] == 4.49   # vanilla = gamma 0, zeta 1 (two tokenizers)
    assert t1[(t1.gamma == -0.03) & (t1.zeta == 1)].note.iloc[0] == "no runs yet"


def test_build_writes_tables_and_figures(records, tmp_path):
    written = b23.build(records, tmp_path)
    for name in ("bondarenko2023_table2", "bondarenko2023_table2_vs_paper", "bondarenko2023_table1",
                 "bondarenko2023_table10", "bondarenko2023_table3", "bondarenko2023_sweep",
                 "bondarenko2023_curves_bert", "bondarenko2023_layers_bert", "bondarenko2023_attention_bert"):
        assert written[name].exists() and written[name].stat().st_size > 0
    md = written["bondarenko2023_table2.md"].read_text()
    assert "41.00±1.41 (4.49±0.01)" in md and "no ImageNet" in md
    (tmp_path / "empty").mkdir()
    assert b23.build([], tmp_path / "empty")["bondarenko2023_table2"].exists()


def test_table10_rows_compare_the_same_runs():
    """Issue 29: W8A8 averaged over 2 training x 3 calibration seeds, W6A8 over one run only (W6A8 looked better)."""
    import pandas as pd

    from qexp.report.bondarenko2023 import settings

    rows = [{"setting": "s", "model": "bert_cpu", "arch": "bert", "method": "vanilla", "attention": "vanilla",
             "attention_cfg": "{}", "gamma": 0.0, "zeta": 1.0, "tokenizer": "t", "scale": "x", "recipe": "fp32",
             "seed": 0, "calibration_seed": None, "perplexity": 10.0, "max_inf_norm": 1.0, "avg_kurtosis": 1.0}]
    for seed in (0, 1):
        for cal in (0, 1, 2):
            rows.append({**rows[0], "recipe": "bq23_w8a8", "seed": seed, "calibration_seed": cal,
                         "perplexity": 20.0 if (seed, cal) == (0, 0) else 30.0})
    rows.append({**rows[0], "recipe": "bq23_w6a8", "seed": 0, "calibration_seed": 0, "perplexity": 25.0})
    df = pd.DataFrame(rows)
    pooled = settings(df, recipes=("bq23_w8a8", "bq23_w6a8")).iloc[0]
    same = settings(df, recipes=("bq23_w8a8", "bq23_w6a8"), same_runs=True).iloc[0]
    assert pooled.bq23_w8a8 > pooled.bq23_w6a8                                   # the misleading comparison
    assert (same.bq23_w8a8, same.bq23_w8a8_runs, same.bq23_w6a8) == (20.0, 1, 25.0)   # like with like
