"""Issue 31: the authors' semantics where qexp's defaults follow the papers' formulas, each against a reference
written here from ../shared/research/pwq-bcq-and-quantized-pretraining.md and zeroquant-lkd-and-int8-gemm.md (float64
or the authors' float32 operation order), with the issue's repro numbers as golden values (hand-checked:
8-bit per row, floor 1e-8: scale = 1e-8 / 127 = 7.874e-11, round(4e-11 / s) = round(0.508) = 1, round(1e-10 / s) =
round(1.27) = 1; 2-bit authors' asymmetric: step 3 / (2 * 1) = 1.5, levels {0, 1.5, 3})."""
import pytest
import torch

from qexp.quant.affine import fake_quantize, qparams
from qexp.quant.dynamic import FormatError, TensorFormat
from qexp.quant.granularity import PerChannel, PerTensor, PerToken


def authors_quantize(x: torch.Tensor, bits: int, symmetric: bool, min_range: float, dim=-1) -> torch.Tensor:
    """The 2024 authors' quantizer (EfficientLLMs src/quantization/quantizer.py as described): range clamped from
    below, symmetric s = max|x| / Qp, asymmetric step (max - min) / (2 Qp) with Qp = 2^(b-1) - 1, round half to even."""
    qp = 2 ** (bits - 1) - 1
    if symmetric:
        r = x.abs().amax(dim=dim, keepdim=True).clamp(min=min_range)
        s = r / qp
        return torch.round(x / s).clamp(-qp - 1, qp) * s
    lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    s = (hi - lo).clamp(min=min_range) / (2 * qp)
    z = torch.round(-lo / s)
    return (torch.round(x / s) + z).clamp(0, 2 * qp).sub(z) * s


def test_the_minimum_range_floor_reproduces_the_issue():
    v = torch.tensor([[4e-11, 1e-10]], dtype=torch.float64)
    authors = TensorFormat(8, PerChannel(0), True, min_range=1e-8).fake_quantize(v)
    paper = TensorFormat(8, PerChannel(0), True).fake_quantize(v)
    assert torch.allclose(authors, torch.tensor([[7.874015748e-11, 7.874015748e-11]], dtype=torch.float64), rtol=1e-9)
    assert torch.allclose(paper, torch.tensor([[4.0157480e-11, 1e-10]], dtype=torch.float64), rtol=1e-6)


def test_the_authors_asymmetric_grid_reproduces_the_issue():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert TensorFormat(2, PerToken(), False, levels="authors").fake_quantize(x).tolist() == [[0, 1.5, 1.5, 3]]
    assert TensorFormat(2, PerToken(), False).fake_quantize(x).tolist() == [[0, 1, 2, 3]]   # the paper's 2^b levels


@pytest.mark.parametrize("bits, symmetric", [(8, True), (4, False), (8, False), (2, False)])
def test_the_authors_formats_match_the_reference_on_random_data(bits, symmetric):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(16, 33, generator=g, dtype=torch.float64) * torch.logspace(-6, 1, 16, dtype=torch.float64)[:, None]
    fmt = TensorFormat(bits, PerToken(), symmetric, min_range=1e-5, levels="authors")
    assert torch.equal(fmt.fake_quantize(x), authors_quantize(x, bits, symmetric, 1e-5))


def test_bad_authors_options_are_refused():
    with pytest.raises(FormatError, match="levels='both'"):
        TensorFormat(8, PerTensor(), False, levels="both")
    with pytest.raises(FormatError, match="min_range=-1"):
        TensorFormat(8, PerTensor(), True, min_range=-1)


def test_the_floor_zeroes_more_second_moment_entries():
    """Figure 12's mechanism: 8-bit per-channel second moments of small gradients fall under the 1e-8 floor, so the
    authors' quantizer zeroes many more entries than the paper's formula."""
    g = torch.Generator().manual_seed(0)
    v = (torch.randn(64, 64, generator=g) * 3e-5) ** 2 * torch.logspace(-2, 2, 64)[:, None]
    zeros = {floor: int((TensorFormat(8, PerChannel(0), True, min_range=floor).fake_quantize(v) == 0).sum())
             for floor in (0.0, 1e-8)}
    assert zeros[1e-8] > 2 * zeros[0.0] > 0, zeros


def test_the_authors_code_switch_selects_every_behaviour():
    from omegaconf import OmegaConf

    from qexp.config.training_quant import training_quant

    recipe = OmegaConf.create({"name": "x", "qpt": {"code": "authors", "saved": "quantized",
                                                    "weights": {"bits": 8, "granularity": "per_channel"},
                                                    "gradients": {"bits": 8, "granularity": "per_token"},
                                                    "activations": {"bits": 4, "granularity": "per_token",
                                                                    "symmetric": False},
                                                    "adam": {"m2": {"bits": 8, "granularity": "per_channel"},
                                                             "timing": "after_update"}}})
    tq = training_quant(recipe)
    assert (tq.linear.saved, tq.timing, tq.adam_scope, tq.code) == ("original", "on_read", "linear_weights", "authors")
    assert (tq.linear.weights.min_range, tq.linear.gradients.min_range, tq.m2.min_range) == (1e-5, 1e-9, 1e-8)
    assert tq.linear.activations.levels == "authors" and tq.describe()["adam"]["scope"] == "linear_weights"
    paper = training_quant(OmegaConf.create({"name": "x", "qpt": {"weights": {"bits": 8}}}))
    assert "code" not in paper.describe() and paper.linear.weights.min_range == 0   # old records' keys unchanged


def test_the_authors_adam_scope_quantizes_linear_weight_states_only():
    """Issue 31 #3: qexp quantized every parameter's states (bias trajectories differed from step 2)."""
    from qexp.kinds.pretrain import scope_groups
    from qexp.quant.optim import QuantizedAdamW

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    ref = [p.detach().clone() for p in net.parameters()]
    groups = scope_groups([{"params": list(net.parameters()), "weight_decay": 0.0}], net)
    assert [(len(g["params"]), g["quantize"]) for g in groups] == [(1, True), (4, False)]
    fmt = TensorFormat(4, PerChannel(0), True)
    opt = QuantizedAdamW(groups, m1=fmt, lr=1e-2)
    plain = torch.optim.AdamW([torch.nn.Parameter(p.clone()) for p in ref], lr=1e-2, weight_decay=0.0)
    for step in range(3):
        for params, o in ((list(net.parameters()), opt), (plain.param_groups[0]["params"], plain)):
            o.zero_grad()
            torch.manual_seed(step)
            for p in params:
                p.grad = torch.randn_like(p)
            o.step()
    ours, theirs = list(net.parameters()), plain.param_groups[0]["params"]
    assert torch.equal(ours[2], theirs[2]) and torch.equal(ours[0], theirs[0])   # bias and embedding: plain AdamW
    assert not torch.equal(ours[1], theirs[1])                                   # the linear weight: quantized m1


def deepspeed_asym(x, x_min, x_max, bits):
    """DeepSpeed compression/utils.py AsymQuantizer (float32, its operation order)."""
    scale = (x_max - x_min) / 2 ** bits
    zero_point = torch.round(x_min / scale) * scale
    q = torch.clamp(torch.round((x - zero_point) / scale), 0, 2 ** bits - 1)
    return q * scale + zero_point


def test_deepspeed_asymmetric_ties_round_as_deepspeed():
    """Issue 31 #4: range [-125, 131], x = [1.5, 2.5, -0.5, 0.5] -> DeepSpeed [1, 3, -1, 1] (qexp gave [2, 2, 0, 0])."""
    p = qparams(torch.tensor(-125.0), torch.tensor(131.0), 8, False, "deepspeed")
    x = torch.tensor([1.5, 2.5, -0.5, 0.5])
    assert fake_quantize(x, p).tolist() == [1, 3, -1, 1] == deepspeed_asym(x, torch.tensor(-125.0), torch.tensor(131.0), 8).tolist()


@pytest.mark.parametrize("bits", [8, 4])
def test_deepspeed_asymmetric_is_bitwise_on_random_data(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(40, 64, generator=g) * 3 + 1
    lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    assert torch.equal(fake_quantize(x, qparams(lo, hi, bits, False, "deepspeed")), deepspeed_asym(x, lo, hi, bits))


def test_bcq_column_grouping_is_the_row_grouping_of_the_transpose():
    """Kwon's quant_model_bcq.py calls BCQ with in_ch_wise=True: codes and alphas along the output dimension."""
    from types import SimpleNamespace

    from qexp.quant.bcq_step import BCQConfig, quantize_layer

    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 16, generator=g)

    def layer(weight):
        q = SimpleNamespace(spec=SimpleNamespace(bits=3), values=None)
        return SimpleNamespace(inner=SimpleNamespace(weight=weight), weight_quantizer=q)

    col, row_t = layer(w), layer(w.t().contiguous())
    quantize_layer("l", col, BCQConfig(group_dim="column"))
    quantize_layer("l", row_t, BCQConfig())
    assert torch.equal(col.weight_quantizer.values, row_t.weight_quantizer.values.t())
    with pytest.raises(Exception, match="group_dim='diag'"):
        BCQConfig.from_config({"group_dim": "diag"}, 3)
