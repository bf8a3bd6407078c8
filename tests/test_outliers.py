"""`qexp analyze outliers` (qexp/outliers.py): the >6-std detection against numpy by hand, a planted outlier
dimension found at the top, and the command writing its PNGs and CSV."""
import json

import numpy as np
import pandas as pd
import torch

from qexp.report.outliers import LayerActivations, outlier_dims, outlier_mask

from .helpers import cli


def test_outlier_mask_is_six_population_stds_from_the_tensor_mean():
    x = np.zeros((50, 4))
    x[7, 2] = 100.0  # mean 0.5, std = sqrt(200 * 100^2 / 200 ... ) computed below by hand
    mean = 100.0 / 200
    std = np.sqrt(((0 - mean) ** 2 * 199 + (100 - mean) ** 2) / 200)
    assert 100 - mean > 6 * std  # 99.5 > 6 * 7.05
    m = outlier_mask(x)
    assert m.sum() == 1 and m[7, 2]
    assert not outlier_mask(np.random.default_rng(0).normal(size=(64, 64))).any()  # 6 std: ~2e-9 per value


def test_outlier_dims_ranks_by_count_then_peak():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 200))  # wide enough that one outlier column does not dominate the tensor's std
    a[:, 5] += 60.0   # every token: 40 outliers (std of the tensor ~4.5, so 6 std ~27 < 60)
    a[:3, 9] = -80.0  # three tokens, larger peak
    la = LayerActivations(0, {"ffn.input": [a[:20], a[20:]], "ffn.output": [rng.normal(size=(40, 200))]})
    d = outlier_dims([la], top=3)
    inp = d[d.tensor == "ffn.input"].set_index("rank")
    assert (inp.loc[1, "dim"], inp.loc[1, "outliers"], inp.loc[1, "token_fraction"]) == (5, 40, 1.0)
    assert (inp.loc[2, "dim"], inp.loc[2, "outliers"]) == (9, 3) and inp.loc[2, "max_abs"] == 80.0
    assert (d[d.tensor == "ffn.output"].outliers == 0).all()


def test_analyze_finds_a_planted_outlier_dimension(tmp_path):
    from qexp.cli import compose
    from qexp.models.loading import load_model
    from qexp.models.quant_bert import QuantEncoder
    from qexp.report.outliers import collect

    cfg = compose(["model=tiny_bert"])
    model = QuantEncoder(load_model(cfg.model, num_labels=None).model).eval()
    with torch.no_grad():
        model.layers[1].ffn_output.inner.bias[3] = 500.0  # FFN output of layer 1: dimension 3 is huge for every token
    seqs = [{"input_ids": torch.randint(5, 50, (1, 12), generator=torch.Generator().manual_seed(i))} for i in range(4)]
    acts = collect(model, seqs, [0, 1])
    d = outlier_dims(acts, top=2)
    top = d[(d.layer == 1) & (d.tensor == "ffn.output") & (d["rank"] == 1)].iloc[0]
    assert top.dim == 3 and top.outliers == top.tokens == 48
    assert d[(d.layer == 0) & (d.tensor == "ffn.output")].outliers.max() < 48


def test_analyze_outliers_command_writes_pngs_and_csv(tmp_path, capsys):
    out = tmp_path / "fig2"
    code, stdout, err = cli(capsys, "analyze", "outliers", "model=tiny_bert", "--layers", "0,1", "--sequences", "3",
                            "--top", "4", "--out", str(out))
    assert code == 0, err
    assert "top outlier dimensions" in stdout and "layer  1 FFN output" in stdout
    for i in (0, 1):
        for kind in ("ranges", "outliers"):
            assert (out / f"ffn_{kind}_layer{i}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = pd.read_csv(out / "outlier_dims.csv")
    assert set(d.layer) == {0, 1} and set(d.tensor) == {"ffn.input", "ffn.output"} and d["rank"].max() == 4
    meta = json.loads((out / "analysis.json").read_text())
    assert meta["layers"] == [0, 1] and "first 3" in meta["data"]
    assert not list(out.glob(".tmp-*"))


def test_analyze_outliers_bad_input(tmp_path, capsys):
    from .helpers import cli

    code, _, err = cli(capsys, "analyze", "outliers", "model=tiny_bert", "--layers", "7", "--out", str(tmp_path))
    assert code != 0 and "layer(s) [7] do not exist; tiny_bert has layers 0..1" in err
    code, _, err = cli(capsys, "analyze", "outliers", "model=tiny_bert", "--layers", "a", "--out", str(tmp_path))
    assert code != 0 and "--layers='a' must be comma-separated integers" in err
    code, _, err = cli(capsys, "analyze", "figures")
    assert code != 0 and "invalid choice: 'figures'" in err
