"""Every recipe config is composed and run once on tiny_bert (STYLE 13): a new recipe is covered the day it lands."""
import pytest

from qexp.cli import conf_dir

from .helpers import run_cfg

# quantized pre-training recipes (qpt_*) apply to the pre-training tasks only: tests/test_qpt.py runs each of them
RECIPES = sorted(p.stem for p in (conf_dir() / "recipe").glob("*.yaml") if not p.stem.startswith(("_", "qpt_")))


def _short(recipe):
    """Overrides that keep the recipe's algorithm but shorten its loops to a smoke size (AdaRound, QAT)."""
    from omegaconf import OmegaConf

    from qexp.cli import compose

    r = OmegaConf.to_container(compose([f"+recipe={recipe}"]).recipe)
    out = []
    if "adaround" in r:
        out += ["recipe.adaround.iterations=6", "recipe.adaround.num_samples=4", "recipe.adaround.batch_size=2"]
    if "qat" in r:
        out += ["recipe.qat.max_steps=3", "recipe.qat.batch_size=4"]
    if "lkd" in r:
        out += ["recipe.lkd.steps=2", "recipe.lkd.batch_size=2", "recipe.lkd.eval_batches=1"]
    if ((r.get("bcq") or {}).get("search") or {}).get("mode", "none") != "none":
        out += ["recipe.bcq.search.trials=3", "recipe.bcq.search.samples=8", "recipe.bcq.search.startup_trials=2"]
    if "groups" in r:
        out += ["recipe.groups=16"]  # tiny_bert/tiny_gpt2 widths (48, 96, 144, 192) are multiples of 16, not of 48*k
    return out


def _layers(recipe) -> int:
    """12 layers (as BERT-base) for the recipes whose site rules name layers 10 and 11 (Table 2), else 2: the other
    recipes select sites by pattern, and two layers exercise every pattern at a sixth of the cost."""
    text = (conf_dir() / "recipe" / f"{recipe}.yaml").read_text()
    return 12 if ("layer.10" in text or "layer.11" in text) else 2


def test_layer_count_covers_the_recipes_that_name_deep_layers():
    assert _layers("loo_ffn_residual_l10_11") == 12 and _layers("w8a8_ptq") == 2


def test_short_overrides_cover_the_looping_recipes():
    assert _short("w4a32_adaround") and _short("qat_w8a8") and not _short("w8a8_ptq")


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_on_a_glue_task(recipe, tmp_path, rte_like):
    n = _layers(recipe)
    rec = run_cfg(tmp_path, f"+recipe={recipe}", "task=rte", f"task.data_dir={rte_like}", *_short(recipe), layers=n)
    assert rec["recipe"] == recipe
    if recipe.startswith("qat_"):
        assert rec["qat"]["steps"] == 3 and rec["qat"]["ranges"]["sites_moved"] > 0
    if "adaround" in recipe:
        assert len(rec["adaround"]["layers"]) == n * 6 + 2  # every linear weight: 6 per layer, pooler, classifier
    assert 0.0 <= rec["score"] <= 100.0
    assert rec["metrics"]["validation"]["n"] == 16
    quantized = sum(rec["sites"][k]["quantized"] for k in ("activation", "weight", "input"))
    assert (quantized == 0) == (recipe == "fp32")
    if "lkd" in recipe:
        assert len(rec["lkd"]["blocks"]) == n and rec["lkd"]["config"]["steps"] == 2


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_on_the_label_free_task(recipe, tmp_path):
    if recipe.startswith("qat_"):
        with pytest.raises(ValueError, match=r"trains \(QAT\) on labelled data.*label_free task"):
            run_cfg(tmp_path, f"+recipe={recipe}", *_short(recipe), layers=_layers(recipe))
        return
    if recipe.startswith("pwq_bo_"):
        with pytest.raises(ValueError, match=r"needs an objective on the task's training data"):
            run_cfg(tmp_path, f"+recipe={recipe}", *_short(recipe), layers=_layers(recipe))
        return
    if recipe == "mp_ptq_r16_io16_out16":   # a bare encoder has no pooler/classifier: it would equal mp_ptq_r16_io16
        with pytest.raises(ValueError, match=r"set this recipe apart from another row"):
            run_cfg(tmp_path, f"+recipe={recipe}", *_short(recipe), layers=_layers(recipe))
        return
    rec = run_cfg(tmp_path, f"+recipe={recipe}", *_short(recipe), layers=_layers(recipe))
    m = rec["metrics"]
    if recipe == "fp32":
        assert m["final_rel_error"] == 0.0 and m["mean_site_rel_error"] == 0.0
    else:
        assert 0.0 < m["final_rel_error"] < 1.0
    assert m["max_inf_norm"] > 0 and m["avg_kurtosis"] > 0


def _bert_only(recipe) -> bool:
    """Recipes written for Bondarenko et al.'s BERT sites (they name output sites a decoder does not have)."""
    from omegaconf import OmegaConf

    from qexp.cli import compose

    r = OmegaConf.to_container(compose([f"+recipe={recipe}"]).recipe)
    q = r.get("quant") or {}
    rules = [x for x in q.get("sites") or [] if not x.get("optional")]
    return any(x["match"].startswith(("encoder.", "embeddings.", "pooler", "classifier")) for x in rules)


# recipes that quantize only Bondarenko et al.'s operation outputs: the decoder wrapper has none of those sites, so on a
# decoder they would leave everything in floating point and are refused (issue 14 #2)
NOTHING_ON_A_DECODER = {"w32a8_ptq", "loo_all"}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_on_a_decoder_perplexity_task(recipe, tmp_path, wikitext_like):
    """Every recipe on tiny_gpt2 + a WikiText-like file: it runs, or (BERT-site recipes, QAT) fails with a message
    that names the problem."""
    from qexp.quant.sites import SiteError

    args = [f"+recipe={recipe}", "model=tiny_gpt2", "task=wikitext2", f"task.data_dir={wikitext_like}", *_short(recipe)]
    if recipe.startswith("qat_"):
        with pytest.raises(ValueError, match="QAT.*perplexity task"):
            run_cfg(tmp_path, *args)
        return
    if _bert_only(recipe):
        with pytest.raises(SiteError, match="matches no quantization site of this model"):
            run_cfg(tmp_path, *args)
        return
    if recipe in NOTHING_ON_A_DECODER:   # activation-only recipes: a decoder has linear inputs, no output sites
        with pytest.raises(ValueError, match=f"recipe '{recipe}' quantizes nothing"):
            run_cfg(tmp_path, *args)
        return
    rec = run_cfg(tmp_path, *args)
    m = rec["metrics"]["test"]
    assert m["windows"] == 2 and m["tokens"] == 2 * 63 and 1.0 < m["perplexity"] < 1e6
    assert rec["model"] == "tiny_gpt2" and rec["task"] == "wikitext2"
    if recipe.startswith("zq_") or recipe == "fp32":
        quantized = rec["sites"]["input"]["quantized"] + rec["sites"]["weight"]["quantized"]
        assert (quantized == 0) == (recipe == "fp32")
        if recipe != "fp32":
            assert rec["relative_error"]["weight"] or rec["relative_error"]["activation"]
    if "lkd" in recipe:
        assert len(rec["lkd"]["blocks"]) == 2


def test_zeroshot_recipe_runs_through_the_runner(tmp_path):
    import json

    d = tmp_path / "mc"
    d.mkdir()
    (d / "mc.jsonl").write_text("\n".join(json.dumps({"query": f"q {i}", "choices": ["a", "b"], "gold": i % 2})
                                          for i in range(6)) + "\n")
    rec = run_cfg(tmp_path, "+recipe=zq_lkd_w48a8", "model=tiny_gpt2", "task=zeroshot_local",
                  "task.tasks=[qexp_mc_local]", f"task.data_dir={d}", *_short("zq_lkd_w48a8"))
    assert set(rec["metrics"]) == {"qexp_mc_local"} and 0.0 <= rec["score"] <= 100.0
    assert len(rec["lkd"]["blocks"]) == 2


def _bert_base_specs(recipe):
    import torch
    from omegaconf import OmegaConf
    from transformers import BertConfig, BertForSequenceClassification

    from qexp.cli import compose
    from qexp.models.quant_bert import QuantEncoder
    from qexp.quant.sites import configure, quantizers
    from qexp.config.quant import quant_config

    cfg = compose([f"+recipe={recipe}", "task=rte"])
    with torch.device("meta"):
        model = QuantEncoder(BertForSequenceClassification(BertConfig(num_labels=2)))  # BERT-base sizes
    configure(model, quant_config(OmegaConf.to_container(cfg.recipe), cfg.calibration))
    return list(quantizers(model, group="activations"))  # the paper's operation outputs, not ZeroQuant's linear inputs


def test_mixed_precision_keeps_36_of_161_activation_quantizers_in_16_bit():
    """Bondarenko et al. 2021, footnote 1: '36 out of 161 activation quantizers for BERT-base' (the * and † row)."""
    acts = _bert_base_specs("mp_ptq_r16_io16")
    assert len(acts) == 161 and sum(q.spec.bits == 16 for q in acts) == 36
    assert sum(q.spec.bits == 16 for q in _bert_base_specs("mp_ptq_r16")) == 12
    out = {q.name: q.spec for q in _bert_base_specs("mp_ptq_r16_io16_out16")}
    assert sum(s.bits == 16 for s in out.values()) == 38 and out["classifier"].estimator["name"] == "mse"


def test_peg_ptq_groups_only_the_ffn_sites():
    from qexp.quant.granularity import PerEmbeddingGroup, PerTensor

    acts = {q.name: q.spec.granularity for q in _bert_base_specs("peg_ptq")}
    peg = [n for n, g in acts.items() if isinstance(g, PerEmbeddingGroup)]
    assert len(peg) == 36 and all(acts[n] == PerEmbeddingGroup(6, permute=True) for n in peg)
    assert all(n.rsplit(".", 1)[0].endswith("ffn") for n in peg)
    assert sum(isinstance(g, PerTensor) for g in acts.values()) == 161 - 36


def test_leave_one_out_leaves_exactly_its_group_out():
    acts = {q.name: q.spec.enabled for q in _bert_base_specs("loo_ffn_residual_l10_11")}
    assert sorted(n for n, on in acts.items() if not on) == ["encoder.layer.10.ffn.residual_sum",
                                                             "encoder.layer.11.ffn.residual_sum"]
    assert sum(not on for on in {q.name: q.spec.enabled for q in _bert_base_specs("loo_softmax_input")}.values()) == 12
    assert all(q.spec.enabled for q in _bert_base_specs("loo_all"))


def _bert_base_footprint(recipe):
    import torch
    from omegaconf import OmegaConf
    from transformers import BertConfig, BertForSequenceClassification

    from qexp.cli import compose
    from qexp.models.quant_bert import QuantEncoder
    from qexp.quant.sites import configure
    from qexp.config.quant import quant_config
    from qexp.experiment.summary import memory_footprint

    cfg = compose([f"+recipe={recipe}", "task=rte"])
    with torch.device("meta"):
        model = QuantEncoder(BertForSequenceClassification(BertConfig(num_labels=2)))
    configure(model, quant_config(OmegaConf.to_container(cfg.recipe), cfg.calibration))
    return memory_footprint(model)


def test_memory_reduction_from_the_actual_bit_widths_on_bert_base():
    """Hand count for BERT-base (V=30522, P=512, T=2, H=768, I=3072, L=12, 2 labels): every weight matrix, embedding
    table and LayerNorm gain is quantized; biases and LayerNorm shifts stay 32-bit.  The paper's Table 7 prints
    x8.00 / x5.33 / x8.85; ours are x7.95 / x5.31 / x8.89 because the 32-bit biases and LayerNorm parameters count
    (README, Deviations)."""
    V, P, T, H, I, L = 30522, 512, 2, 768, 3072, 12
    emb = V * H
    quantized = emb + P * H + T * H + H + L * (4 * H * H + H + 2 * H * I + H) + H * H + 2 * H
    fp = H + L * (4 * H + H + I + H + H) + H + 2
    n = quantized + fp
    w4 = _bert_base_footprint("w4a32_ptq")
    assert w4["parameters"] == n and w4["bits"] == 4 * quantized + 32 * fp
    assert w4["reduction"] == round(32 * n / (4 * quantized + 32 * fp), 4) == 7.9477
    assert _bert_base_footprint("w6a32_ptq")["reduction"] == round(32 * n / (6 * quantized + 32 * fp), 4) == 5.3117
    emb2 = _bert_base_footprint("qat_w4a8_emb2")  # token embeddings at 2 bits, every other weight at 4
    assert emb2["bits"] == 2 * emb + 4 * (quantized - emb) + 32 * fp and emb2["reduction"] == 8.8936
