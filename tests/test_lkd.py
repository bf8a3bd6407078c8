"""LKD: block boundaries from hooks, options checked, and on real MiniLM-L6 weights at W4/8A8 every block's MSE to the
teacher drops while the teacher stays bit-identical."""
import pytest
import torch
from omegaconf import OmegaConf

from qexp.train.lkd import LKDConfig, LKDError, apply_lkd, block_io, make_teacher, random_token_sampler
from qexp.models.loading import load_model
from qexp.models.families import quantizable
from qexp.quant.calibrate import calibrate
from qexp.quant.sites import configure

W = {"enabled": True, "symmetric": True, "granularity": {"name": "per_group", "n_groups": 48}}
W48A8 = {"weights": {"enabled": False}, "activations": {"enabled": False},
         "inputs": {"enabled": False},
         "sites": [{"match": "*.layer.*.attn.*.weight", **W, "bits": 8},
                   {"match": "*.layer.*.ffn.*.weight", **W, "bits": 4},
                   {"match": "*.ln.weight", "enabled": False, "optional": True},
                   {"match": "*.layer.*.attn.*.input", "enabled": True, "bits": 8, "symmetric": True,
                    "granularity": "per_token"},
                   {"match": "*.layer.*.ffn.*.input", "enabled": True, "bits": 8, "symmetric": True,
                    "granularity": "per_token"}]}


def test_options_are_checked():
    with pytest.raises(LKDError, match="unknown LKD loss 'kl'.*l1.*mse"):
        LKDConfig(loss="kl")
    with pytest.raises(LKDError, match="unknown LKD data source 'wiki'.*task, random, text"):
        LKDConfig(data="wiki")
    with pytest.raises(LKDError, match="text_file"):
        LKDConfig(data="text")
    with pytest.raises(LKDError, match=r"unknown LKD option\(s\) \['step'\]"):
        LKDConfig.from_config({"step": 3})


def test_block_io_captures_what_the_block_computes():
    m = load_model(OmegaConf.load("conf/model/tiny_gpt2.yaml"))
    q = quantizable(m.model.eval(), "decoder")
    x = torch.randint(0, 256, (2, 12))
    args, kwargs, out = block_io(q, q.blocks[1], {"input_ids": x})
    with torch.no_grad():
        again = q.blocks[1](*args, **kwargs)
    assert torch.equal(again[0] if isinstance(again, tuple) else again, out)


def _distil(model, blocks, sample, steps, lr, batch=4):
    teacher = make_teacher(model)
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    g, g_eval = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

    def batches():
        while True:
            yield sample(batch, g)

    report = apply_lkd(model, blocks, batches, [sample(batch, g_eval) for _ in range(2)],
                       LKDConfig(steps=steps, batch_size=batch, lr=lr), teacher=teacher, progress=False)
    assert all(torch.equal(snapshot[k], v) for k, v in teacher.state_dict().items())  # teacher untouched
    return report


def test_lkd_lowers_every_block_loss_on_a_decoder():
    m = load_model(OmegaConf.load("conf/model/tiny_gpt2.yaml"))
    q = quantizable(m.model.eval(), "decoder")
    configure(q, W48A8 | {"sites": [{**r, "granularity": {"name": "per_group", "n_groups": 16}}
                                    if "weight" in r["match"] and r.get("bits") else r for r in W48A8["sites"]]})
    calibrate(q, lambda: iter([]), 0, progress=False)
    report = _distil(q, q.blocks, random_token_sampler(257, 24, "cpu"), steps=15, lr=1e-4)
    assert all(r["eval_loss_after"] < 0.8 * r["eval_loss_before"] for r in report)


@pytest.mark.slow   # 6 blocks x 20 steps of 8 x 128 on the real model: minutes on 2 cores (`make test-slow`)
def test_lkd_lowers_every_block_mse_on_real_minilm(minilm_dir):
    """W4/8A8 on the real MiniLM-L6 weights, real English text (CPython's pydoc topics), 20 steps of 8 x 128 per
    block.  lr 5e-5 (10x the paper's 5e-6, which needs its 100 steps of 32 to move this far).  Run with -s to see it."""
    from qexp.tasks.text_outliers import split_windows

    m = load_model(OmegaConf.load("conf/model/minilm_l6.yaml"))
    q = quantizable(m.model.eval(), "bert")
    configure(q, W48A8)
    cal, held = split_windows(m.tokenizer, OmegaConf.create({"source": "pydoc_topics", "max_length": 128,
                                                            "calibration_windows": 64, "eval_windows": 8}))
    calibrate(q, lambda: iter([]), 0, progress=False)
    sample = lambda n, g: {"input_ids": cal[torch.randint(len(cal), (n,), generator=g)]}  # noqa: E731
    report = _distil(q, q.blocks, sample, steps=20, lr=5e-5, batch=8)
    for r in report:
        print(f"block {r['block']}: MSE to teacher {r['eval_loss_before']:.5f} -> {r['eval_loss_after']:.5f}")
        assert r["eval_loss_after"] < 0.9 * r["eval_loss_before"]
    assert len(report) == 6
