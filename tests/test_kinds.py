"""Task kinds behind one interface: every knob reaches every kind, or the kind refuses it before any work."""
from __future__ import annotations

from collections import Counter

import pytest

from qexp.kinds.base import KINDS, KindError, TaskKind, load_kinds

from .helpers import run_cfg


def test_every_task_config_names_a_registered_kind():
    from qexp.cli import compose
    from qexp.config.compose import group_options

    kinds = {compose([f"task={t}"]).task.kind for t in group_options("task")}
    assert kinds == set(load_kinds().names()) == {"glue", "label_free", "perplexity", "lm_eval", "pretrain_mlm",
                                                   "pretrain_clm", "continue_clm", "continue_mlm"}


def test_an_unknown_kind_lists_the_valid_ones(tmp_path):
    from qexp.common.registry import UnknownChoiceError

    with pytest.raises(UnknownChoiceError, match="unknown task kind 'pretrain'; valid choices: continue_clm, continue_mlm, glue, label_free"):
        run_cfg(tmp_path, "task.kind=pretrain")


def _count_observed(monkeypatch) -> Counter:
    """How many batches each activation site's estimator observes (weights observe their tensor once)."""
    from qexp.quant.quantizer import Quantizer

    seen: Counter = Counter()
    forward = Quantizer.forward

    def counting(self, x):
        if self.state == "estimating":
            seen[self.name] += 1
        return forward(self, x)

    monkeypatch.setattr(Quantizer, "forward", counting)
    return seen


@pytest.mark.parametrize("kind,overrides", [
    ("glue", ["task=rte", "+recipe=w8a8_ptq"]),
    ("label_free", ["+recipe=w8a8_ptq"]),
    ("perplexity", ["model=tiny_gpt2", "task=wikitext2", "+recipe=zq_ptq_w8a8"]),
])
@pytest.mark.parametrize("num_batches,batch_size", [(3, 2), (1, 3)])
def test_the_estimators_see_exactly_num_batches_batches(tmp_path, monkeypatch, rte_like, wikitext_like, kind,
                                                        overrides, num_batches, batch_size):
    data = {"glue": [f"task.data_dir={rte_like}"], "perplexity": [f"task.data_dir={wikitext_like}"]}.get(kind, [])
    seen = _count_observed(monkeypatch)
    rec = run_cfg(tmp_path, *overrides, *data, f"calibration.num_batches={num_batches}",
                  f"calibration.batch_size={batch_size}")
    assert rec["config"]["task"]["kind"] == kind
    assert seen and set(seen.values()) == {num_batches}, seen.most_common(3)


def test_calibration_data_shorter_than_num_batches_is_an_error():
    import torch
    from torch import nn

    from qexp.quant.calibrate import calibrate
    from qexp.quant.estimators import CalibrationError
    from qexp.quant.quantizer import Quantizer, QuantSpec

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = Quantizer("x", QuantSpec(bits=8, estimator="current_minmax"))

        def forward(self, x):
            return self.q(x)

    m = M()
    with pytest.raises(CalibrationError, match="num_batches=3 but the data gave only 2 batches"):
        calibrate(m, lambda: iter([{"x": torch.ones(2)}, {"x": torch.ones(2)}]), 3, progress=False)
    calibrate(m, lambda: iter([{"x": torch.full((2,), float(i))} for i in range(5)]), 2, progress=False)
    assert float(m.q.x_max) == 1.0  # only the first two batches (0 and 1) were seen, not the other three


@pytest.mark.parametrize("value", ["calibration.num_batches=0", "calibration.batch_size=-1",
                                   "calibration.num_batches=1.5"])
def test_calibration_sizes_must_be_positive_integers(tmp_path, value):
    from qexp.config.quant import CalibrationConfigError

    with pytest.raises(CalibrationConfigError, match=value.split("=")[0]):
        run_cfg(tmp_path, "+recipe=w8a8_ptq", value)


@pytest.mark.parametrize("overrides", [["task=rte"], []])
def test_lkd_seq_length_is_refused_where_the_task_fixes_it(tmp_path, rte_like, overrides):
    data = [f"task.data_dir={rte_like}"] if overrides else []
    with pytest.raises(KindError, match=r"recipe.lkd.seq_length=77 cannot apply .* valid: recipe.lkd.seq_length=\d+ "
                                        r"or null, or recipe.lkd.data=random\|text"):
        run_cfg(tmp_path, *overrides, *data, "+recipe=zq_lkd_w8a8", "recipe.lkd.seq_length=77")
    assert not (tmp_path / "cache").exists()  # refused before any fine-tuning


def test_lkd_seq_length_is_honoured_where_it_applies(tmp_path, rte_like, wikitext_like):
    lm = run_cfg(tmp_path, "model=tiny_gpt2", "task=wikitext2", f"task.data_dir={wikitext_like}",
                 "+recipe=zq_lkd_w8a8", "recipe.lkd.steps=1", "recipe.lkd.batch_size=2", "recipe.lkd.seq_length=24")
    assert lm["lkd"]["seq_length"] == 24
    glue = run_cfg(tmp_path, "task=rte", f"task.data_dir={rte_like}", "+recipe=zq_lkd_w8a8", "recipe.lkd.steps=1",
                   "recipe.lkd.batch_size=2", "recipe.lkd.data=random", "recipe.lkd.seq_length=12")
    assert glue["lkd"]["seq_length"] == 12


@pytest.mark.parametrize("overrides", [[], ["model=tiny_gpt2", "task=wikitext2"]])
def test_qat_is_refused_where_there_are_no_labels(tmp_path, overrides):
    with pytest.raises(KindError, match="trains \\(QAT\\) on labelled data.*valid: the GLUE tasks"):
        run_cfg(tmp_path, *overrides, "+recipe=qat_w8a8")


def test_a_kind_refuses_the_wrong_model_family(tmp_path, wikitext_like):
    with pytest.raises(KindError, match="needs a decoder model.* family 'bert'"):
        run_cfg(tmp_path, "task=wikitext2", f"task.data_dir={wikitext_like}")
    with pytest.raises(KindError, match="needs an encoder model.* family 'decoder'"):
        run_cfg(tmp_path, "model=tiny_gpt2")


def test_effective_calibration_and_configure_run_once_per_run(tmp_path, rte_like, monkeypatch):
    from qexp.config import quant as qcfg
    from qexp.experiment import spec
    from qexp.kinds import glue
    from qexp.quant import sites

    calls = Counter()

    def counted(module, name):
        fn = getattr(module, name)

        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)

        monkeypatch.setattr(module, name, wrapper)

    counted(spec, "effective_calibration")
    counted(qcfg, "effective_calibration")
    counted(spec, "quant_config")
    counted(spec, "training_quant")
    counted(glue, "configure")
    counted(sites, "configure")
    run_cfg(tmp_path, "task=rte", f"task.data_dir={rte_like}", "+recipe=qat_w8a8", "recipe.qat.max_steps=1",
            "recipe.qat.batch_size=4")
    # the recipe is interpreted once (qexp.experiment.spec.RunSpec.parse), the model configured once
    assert calls == {"effective_calibration": 1, "quant_config": 1, "training_quant": 1, "configure": 1}


def test_a_new_kind_is_one_class(tmp_path, monkeypatch):
    """The seam: a kind written here (random token ids, mean |hidden state| as the score) runs through the pipeline
    unchanged, with calibration, the record and resume."""
    import torch

    from qexp.kinds.base import Evaluation, Loaded, register
    from qexp.models.families import family_of
    from qexp.models.loading import load_model
    from qexp.quant.sites import configure

    class Toy(TaskKind):
        name = "toy"
        causal = False

        def load(self):
            hf = load_model(self.cfg.model, num_labels=None, seed=self.ctx.seed)
            model = family_of(self.cfg.model).wrap(hf.model).eval()
            configure(model, self.ctx.quant)
            self.loaded = Loaded(model, hf.tokenizer, hf.identity)
            self.ids = torch.randint(5, 50, (8, 16), generator=torch.Generator().manual_seed(self.ctx.seed))
            return self.loaded

        def calibration_batches(self):
            bs = int(self.ctx.calibration.batch_size)
            return lambda: ({"input_ids": self.ids[i:i + bs]} for i in range(0, len(self.ids), bs))

        def evaluate(self, model):
            with torch.no_grad():
                h = model(self.ids).last_hidden_state
            return Evaluation({"mean_abs": float(h.abs().mean())}, float(h.abs().mean()), "random:toy")

    load_kinds()   # register the real kinds first: the copy below is what the test adds to (and is thrown away)
    monkeypatch.setattr(KINDS, "_items", dict(KINDS._items))
    register(Toy)
    rec = run_cfg(tmp_path, "task.kind=toy", "+recipe=w8a8_ptq", "calibration.num_batches=2")
    assert rec["data_source"] == "random:toy" and rec["score"] == rec["metrics"]["mean_abs"] > 0
    assert run_cfg(tmp_path, "task.kind=toy", "+recipe=w8a8_ptq", "calibration.num_batches=2")["skipped"]


def test_every_data_draw_has_a_named_seed_stream():
    """Issue 26 #3: calibration, AdaRound, LKD (training and held-out) and the search objective draw from named streams
    (the offsets every committed record was made with); the pre-training kinds start every stream -- LKD's too, which
    used the training seed before -- from calibration.seed, so one trained model is calibrated under several seeds."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from qexp.kinds.base import SEED_STREAMS
    from qexp.kinds.pretrain import Pretrain

    def kind_of(cls, seed, cal_seed):
        k = cls.__new__(cls)
        k.ctx = SimpleNamespace(seed=seed, calibration=OmegaConf.create({"seed": cal_seed}))
        return k

    glue = kind_of(load_kinds().get("glue"), 7, None)
    assert {s: glue.stream_seed(s) for s in SEED_STREAMS} == {"calibration": 7, "adaround": 8, "lkd_train": 9,
                                                              "lkd_eval": 10, "objective": 11}
    pre = kind_of(Pretrain, 7, 3)
    assert [pre.stream_seed(s) for s in SEED_STREAMS] == [3, 4, 5, 6, 7]
    assert kind_of(Pretrain, 7, None).stream_seed("lkd_train") == 9
    with pytest.raises(KeyError, match="valid: calibration, adaround, lkd_train, lkd_eval, objective"):
        glue.stream_seed("lkd")


def test_a_new_task_needs_no_per_task_calibration_file(tmp_path, monkeypatch):
    """Issue 26 #3: a new kind is one module and its task YAML -- a task without conf/calibration/per_task/<task>.yaml
    calibrates with calibration/default; an explicit calibration= wins; a sweep mixing tasks with and without a file
    is refused with what to do; an experiment's own task choice is left alone (its calibration is the task's)."""
    import shutil

    from qexp.cli import compose, conf_dir
    from qexp.config.compose import UnknownKeyError, with_default_calibration

    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    (conf / "task" / "toy_text.yaml").write_text((conf / "task" / "text_outliers.yaml").read_text()
                                                 .replace("name: text_outliers", "name: toy_text"))
    monkeypatch.setenv("QEXP_CONF", str(conf))
    assert not (conf / "calibration" / "per_task" / "toy_text.yaml").exists()
    cfg = compose(["task=toy_text"])
    assert cfg.task.name == "toy_text" and cfg.calibration.activations.name == "current_minmax"
    assert compose(["task=toy_text", "calibration=mse"]).calibration.activations.name == "mse"
    assert compose(["task=rte"]).calibration.batch_size == 1 and compose(["task=cola"]).calibration.num_batches == 4
    with pytest.raises(UnknownKeyError, match="toy_text have no conf/calibration/per_task"):
        with_default_calibration(["task=rte,toy_text"])
    assert with_default_calibration(["+experiment=bondarenko2021/table1"]) == ["+experiment=bondarenko2021/table1"]
    rec = run_cfg(tmp_path, "task=toy_text", "+recipe=w8a8_ptq")
    assert rec["task"] == "toy_text" and rec["config"]["calibration"]["activations"]["name"] == "current_minmax"
