"""lm-eval on the quantized model in memory: a local multiple-choice YAML + JSONL on tiny_gpt2, checked against our own
log-likelihood scoring of the same quantized model, and clear errors for unknown tasks and missing files."""
import json

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("lm_eval")

from qexp.models.loading import load_model  # noqa: E402
from qexp.models.families import quantizable  # noqa: E402
from qexp.quant.calibrate import calibrate  # noqa: E402
from qexp.quant.sites import configure, quantizers  # noqa: E402
from qexp.tasks import zeroshot  # noqa: E402

DOCS = [{"query": f"Item {i}: the sky is", "choices": ["blue", "green", "very red", "grey"], "gold": i % 4}
        for i in range(10)]


def _task(data_dir, **kw):
    return OmegaConf.create({"tasks": ["qexp_mc_local"], "num_fewshot": 0, "batch_size": 4, "max_length": None,
                             "limit": {"docs": None}, "data_dir": data_dir and str(data_dir), "metric": "acc", **kw})


@pytest.fixture
def mc_dir(tmp_path):
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(d) for d in DOCS) + "\n")
    return tmp_path


def _quantized_tiny_gpt2():
    m = load_model(OmegaConf.load("conf/model/tiny_gpt2.yaml"))
    q = quantizable(m.model.eval(), "decoder")
    configure(q, {"weights": {"bits": 4, "symmetric": True}, "inputs": {"bits": 4, "symmetric": True,
                                                                       "granularity": "per_token"}})
    calibrate(q, lambda: iter([]), 0, progress=False)
    return m.tokenizer, q


@torch.no_grad()
def _our_accuracy(model, tok) -> float:
    right = 0
    for d in DOCS:
        ctx = tok(d["query"])["input_ids"]
        scores = []
        for c in d["choices"]:
            cont = tok(" " + c)["input_ids"]
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].double(), -1)
            scores.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
        right += int(max(range(len(scores)), key=scores.__getitem__) == d["gold"])
    return right / len(DOCS)


def test_local_multiple_choice_runs_on_the_quantized_model(mc_dir):
    tok, q = _quantized_tiny_gpt2()
    calls = []
    site = next(s for s in quantizers(q, group="inputs") if s.name == "decoder.layer.0.attn.c_attn.input")
    handle = site.register_forward_hook(lambda m, i, o: calls.append(m.state))
    metrics = zeroshot.evaluate(q.hf_model, tok, _task(mc_dir), "cpu")
    handle.remove()
    assert calls and set(calls) == {"fixed"}  # lm-eval ran through our quantizers
    assert metrics["qexp_mc_local"]["acc"] == pytest.approx(_our_accuracy(q.hf_model, tok))
    assert zeroshot.score(metrics, _task(mc_dir)) == pytest.approx(100 * metrics["qexp_mc_local"]["acc"])


def test_unknown_tasks_and_missing_data_dir_are_clear_errors(mc_dir):
    tok, q = _quantized_tiny_gpt2()
    with pytest.raises(zeroshot.ZeroShotError, match=r"unknown local lm-eval task\(s\) \['qexp_nope'\].*qexp_mc_local"):
        zeroshot.evaluate(q.hf_model, tok, _task(mc_dir, tasks=["qexp_nope"]), "cpu")
    with pytest.raises(zeroshot.ZeroShotError, match="reads files from task.data_dir"):
        zeroshot.evaluate(q.hf_model, tok, _task(None), "cpu")
    with pytest.raises(zeroshot.ZeroShotError, match=r"lm-eval does not know task\(s\) \['not_a_task_xyz'\]"):
        zeroshot.evaluate(q.hf_model, tok, _task(mc_dir, tasks=["not_a_task_xyz"]), "cpu")
