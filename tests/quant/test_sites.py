import pytest

from qexp.quant.sites import SiteError, resolve_specs

SITES = [("encoder.layer.0.ffn.output", "activations"), ("encoder.layer.1.ffn.output", "activations"),
         ("encoder.layer.1.ffn.residual_sum", "activations"), ("encoder.layer.1.ffn.output.weight", "weights"),
         ("classifier", "activations"), ("encoder.layer.1.ffn.output.input", "inputs")]
BASE = {"weights": {"bits": 8, "symmetric": True}, "activations": {"bits": 8}}


def test_defaults_per_kind():
    specs = resolve_specs(SITES, BASE)
    assert specs["encoder.layer.1.ffn.output.weight"].symmetric
    assert not specs["classifier"].symmetric


def test_inputs_are_off_unless_their_group_is_configured():
    assert not resolve_specs(SITES, BASE)["encoder.layer.1.ffn.output.input"].enabled
    s = resolve_specs(SITES, {**BASE, "inputs": {"bits": 8, "symmetric": True, "granularity": "per_token"}})
    assert s["encoder.layer.1.ffn.output.input"].enabled and str(s["encoder.layer.1.ffn.output.input"].granularity) \
        == "per_token"
    assert str(s["encoder.layer.1.ffn.output"].granularity) == "per_tensor"  # output sites keep their own default


def test_unknown_group_is_named():
    with pytest.raises(SiteError, match="unknown default group 'activation'.*inputs"):
        resolve_specs([("x", "activation")], BASE)


def test_precedence_default_then_globs_in_order_then_exact():
    cfg = {**BASE, "sites": [
        {"match": "encoder.layer.1.ffn.output", "bits": 4},      # exact: wins although listed first
        {"match": "encoder.layer.*.ffn.*", "bits": 16},
        {"match": "*.ffn.output", "bits": 6},                      # later glob wins over the earlier one
    ]}
    s = resolve_specs(SITES, cfg)
    assert s["encoder.layer.1.ffn.output"].bits == 4
    assert s["encoder.layer.0.ffn.output"].bits == 6
    assert s["encoder.layer.1.ffn.residual_sum"].bits == 16
    assert s["classifier"].bits == 8


def test_disabled_kind_and_site():
    s = resolve_specs(SITES, {"weights": {"enabled": False}, "activations": {"bits": 8},
                              "sites": [{"match": "classifier", "enabled": False}]})
    assert not s["encoder.layer.1.ffn.output.weight"].enabled and not s["classifier"].enabled


def test_a_rule_that_matches_nothing_is_an_error():
    with pytest.raises(SiteError, match="ffn.ouput.*matches no quantization site.*qexp ls sites"):
        resolve_specs(SITES, {**BASE, "sites": [{"match": "*.ffn.ouput", "bits": 16}]})
    with pytest.raises(SiteError, match="no 'match'"):
        resolve_specs(SITES, {**BASE, "sites": [{"bits": 16}]})


def test_bad_value_names_the_site():
    with pytest.raises(ValueError, match="site 'classifier'.*bit-width 32 is not supported.* to 16"):
        resolve_specs(SITES, {**BASE, "sites": [{"match": "classifier", "bits": 32}]})


def test_optional_rules_may_match_nothing():
    s = resolve_specs(SITES, {**BASE, "sites": [{"match": "pooler", "bits": 16, "optional": True}]})
    assert all(spec.bits == 8 for spec in s.values())


def test_every_layer_selector_speaks_the_site_glob_dialect():
    """Issue 26 #4: BCQ, AdaRound and quantized training select linears by weight-site globs, as quant.sites[].match
    does; their old keys (globs over linear names) are refused with the new spelling, before anything loads."""
    from qexp.config.training_quant import TrainingQuantConfigError, training_quant
    from qexp.quant.adaround import AdaRoundConfig
    from qexp.quant.bcq import BCQError
    from qexp.quant.bcq_step import BCQConfig
    from qexp.quant.sites import SelectorError, matching

    assert BCQConfig.from_config({"sites": "encoder.layer.0.*.weight"}, 4).sites == ("encoder.layer.0.*.weight",)
    assert AdaRoundConfig.from_config({"sites": ["*.ffn.*.weight"]}).sites == ("*.ffn.*.weight",)
    with pytest.raises(BCQError, match=r"recipe.bcq.layers is now recipe.bcq.sites.*write recipe.bcq.sites="
                                       r"\[encoder.layer.\*.weight, decoder.layer.\*.weight\]"):
        BCQConfig.from_config({"layers": ["encoder.layer.*", "decoder.layer.*"]}, 4)
    with pytest.raises(SelectorError, match=r"recipe.adaround.layers is now recipe.adaround.sites"):
        AdaRoundConfig.from_config({"layers": "*"})
    with pytest.raises(TrainingQuantConfigError, match=r"recipe.qpt.include is now recipe.qpt.sites.*"
                                                       r"\[decoder.layer.\*.weight\]"):
        training_quant({"qpt": {"weights": {"bits": 8}, "include": ["decoder.layer.*"]}})
    names = ["encoder.layer.0.attn.query.weight", "encoder.layer.0.ffn.output.weight", "classifier.weight"]
    assert matching(names, ["encoder.layer.*.weight"]) == names[:2] and matching(names, ["*.ffn.*"]) == [names[1]]
