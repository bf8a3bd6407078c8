"""Training memory by component (Chitsaz et al. 2024, Appendix B): the analytic model equals a measured step of a
small model byte for byte, the peak moves to the start of the backward as batches grow, savings are hand-checked."""
import json

import pytest
import torch

from qexp.cli import compose
from qexp.models import scratch
from qexp.models.families import family_of
from qexp.train import memory


@pytest.mark.parametrize("layers,d,heads,ffn,batch,seq,vocab", [(1, 64, 4, 256, 3, 32, 500), (3, 48, 4, 96, 4, 24, 200)])
def test_analytic_equals_a_measured_step(layers, d, heads, ffn, batch, seq, vocab):
    cfg = compose(["model=gpt2_cpu", f"model.architecture.num_hidden_layers={layers}",
                   f"model.architecture.hidden_size={d}", f"model.architecture.num_attention_heads={heads}",
                   f"model.architecture.intermediate_size={ffn}"]).model
    hf = scratch.build(cfg, vocab, seq, {"pad_token_id": 0}, seed=0)
    model = family_of(cfg).wrap(hf).train()
    ids = torch.randint(5, vocab, (batch, seq))
    measured = memory.measure(model, torch.optim.AdamW(model.parameters(), lr=1e-3), {"input_ids": ids, "labels": ids})
    predicted = memory.analytic(memory.shape_of(hf), batch, seq)
    for k in ("parameters", "gradients", "optimizer_states", "activations"):
        assert measured[k] == predicted[k], k


def test_gpt2_small_parameter_count():
    # HF GPT2LMHeadModel("gpt2").num_parameters() with the tied head: 124,439,808 (the "124M" of the paper)
    assert memory.DecoderShape.gpt2("gpt2_small").parameters == 124_439_808


def test_peak_moves_to_the_start_of_the_backward_with_larger_batches():
    small = memory.DecoderShape.gpt2("gpt2_small")
    kw = dict(act_bytes=2, attention="flash")
    assert memory.analytic(small, 1, 128, **kw)["peak_at"] == "backward end"
    assert memory.analytic(small, 32, 1024, **kw)["peak_at"] == "backward start"
    with pytest.raises(ValueError, match="attention='sdpa'; valid: eager, flash"):
        memory.analytic(small, 1, 8, attention="sdpa")


def test_savings_by_hand():
    # 8 bits instead of 32: 3/4 saved; instead of 16: 1/2; nothing below the current width
    sv = memory.savings({"parameters": 400, "activations": 200}, 8, {"parameters": 4, "activations": 2})
    assert sv == {"parameters": 300.0, "activations": 100.0}
    assert memory.savings({"activations": 200}, 16, {"activations": 1}) == {"activations": 0.0}


def test_bench_record_renders_the_memory_figures(tmp_path):
    from qexp.report import chitsaz2024

    from qexp.bench.memory import bench_memory

    res = bench_memory(batch=2, seq=16, vocab=300)
    assert res["measured"] == res["analytic"]
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "memory__cpu__x.json").write_text(json.dumps({"bench": res, "finished": "t"}))
    written = chitsaz2024.build_memory(tmp_path / "bench", tmp_path)
    assert {"chitsaz2024_figure14_memory", "chitsaz2024_figure15_memory", "chitsaz2024_memory_check"} <= set(written)
