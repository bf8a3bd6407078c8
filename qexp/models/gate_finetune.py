"""Gated attention added to a *pretrained* model in the 2023 authors' fine-tuning form (issue 28; Bondarenko et al.
2023, Appendix B.6 / Table 9; their code's ``--fine_tuning``): each attention head's output is multiplied by
``sigmoid(G(x)) / pi_init``, with G a per-head linear map of the block input x, weights N(0, std) (std 0.001), bias
``logit(pi_init)`` (pi_init = 0.5: bias 0, scaling 2).  At the initial value the factor is 1, so the model computes
what it computed before the gates were added; the gates are not quantized.

Two families of pretrained attention take it, by forward hooks (the HF modules stay as they are, so checkpoints load
and save as usual):

- BERT encoders (``BertSelfAttention``, MiniLM-L6): the hook scales the context layer (B, T, H * d_head) that the
  self-attention returns, before ``BertSelfOutput``'s dense projection; qexp's encoder wrapper, which computes the
  attention itself, takes the same gate from ``BertSelfAttention.qexp_gate`` (:class:`HeadFactor`: the factor per
  head in its (B, H, T, 1) layout, applied to P V before the context site), so the wrapper needs the gates before it
  is built;
- Llama-style decoders (``LlamaAttention``, SmolLM2: grouped-query attention, rotary embeddings): a pre-hook on
  ``o_proj`` scales its input, the per-query-head attention output (B, T, H * d_head), with x the attention block's
  input (after ``input_layernorm``), captured by a pre-hook on the attention module.

Continued pre-training with the gates: ``task=continue_clm`` (decoders) and ``task=continue_mlm`` (BERT encoders),
:mod:`qexp.kinds.continued`.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .attention import HeadGate


class GateConfigError(ValueError):
    pass


class FineTuneGate(nn.Module):
    """A per-head linear gate with the fine-tuning scaling: factor = sigmoid(G(x)) / pi_init, shape (B, T, H, 1)."""

    def __init__(self, n_heads: int, d_head: int, pi_init: float = 0.5, std: float = 1e-3,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not 0 < pi_init < 1:
            raise GateConfigError(f"pi_init={pi_init} must lie in (0, 1)")
        if std < 0:
            raise GateConfigError(f"gate init std={std} must be >= 0")
        self.gate = HeadGate("linear", n_heads, d_head, pi_init)
        with torch.no_grad():
            self.gate.weight.normal_(0.0, std, generator=generator) if std > 0 else self.gate.weight.zero_()
            self.gate.bias.fill_(math.log(pi_init / (1 - pi_init)))
        self.scale = 1.0 / pi_init
        self.n_heads, self.d_head = n_heads, d_head
        self.stats: dict | None = None   # set to {} to collect the mean factor per head over the following forwards

    def factor(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.gate.logits(x))          # (B, H, T)
        f = p * self.scale
        if self.stats is not None:
            with torch.no_grad():
                self.stats["sum"] = self.stats.get("sum", 0) + f.double().sum(dim=(0, 2)).cpu()
                self.stats["n"] = self.stats.get("n", 0) + f.shape[0] * f.shape[2]
        return f.transpose(1, 2).unsqueeze(-1)   # (B, T, H, 1)

    def apply(self, x: torch.Tensor, heads_out: torch.Tensor) -> torch.Tensor:
        b, t, _ = heads_out.shape
        out = heads_out.view(b, t, self.n_heads, self.d_head) * self.factor(x).to(heads_out.dtype)
        return out.reshape(b, t, self.n_heads * self.d_head)


class HeadFactor:
    """A BERT layer's gate as the encoder wrapper's attention calls it: ``factor(x)`` in (B, H, T, 1).  A plain callable
    (not a module), so the gate's parameters stay registered once, under ``model.qexp_gates``."""

    def __init__(self, gate: FineTuneGate):
        self.gate = gate

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate.factor(x).transpose(1, 2)


@contextlib.contextmanager
def gate_factors(gates):
    """Collects the mean gate factor sigmoid(G(x)) / pi_init per layer and head over the forwards inside the block
    (1: the head passes as pretrained; near 0: the gate closed it, the paper's "no-op" head); the yielded list is
    filled when the block ends.  ``gates`` None or empty: nothing collected, the list stays empty."""
    gates = list(gates or [])
    factors: list[list[float]] = []
    for g in gates:
        g.stats = {}
    try:
        yield factors
        factors.extend([round(float(v), 4) for v in g.stats["sum"] / g.stats["n"]] if g.stats else [] for g in gates)
    finally:
        for g in gates:
            g.stats = None


def _bert_layers(model: nn.Module):
    from transformers.models.bert.modeling_bert import BertSelfAttention

    return [m for m in model.modules() if isinstance(m, BertSelfAttention)]


def _llama_layers(model: nn.Module):
    from transformers.models.llama.modeling_llama import LlamaAttention

    return [m for m in model.modules() if isinstance(m, LlamaAttention)]


def add_gates(model: nn.Module, pi_init: float = 0.5, std: float = 1e-3, seed: int = 0) -> nn.ModuleList:
    """Add a :class:`FineTuneGate` to every attention layer of a pretrained BERT or Llama model; returns the gates
    (register them with the trainer: ``model.qexp_gates``)."""
    g = torch.Generator().manual_seed(int(seed))
    gates = nn.ModuleList()
    bert, llama = _bert_layers(model), _llama_layers(model)
    if not bert and not llama:
        raise GateConfigError(f"{type(model).__name__} has no BertSelfAttention or LlamaAttention layer; the "
                              f"fine-tuning gates support the BERT and Llama families")
    for att in bert:
        n, d = att.num_attention_heads, att.attention_head_size
        gate = FineTuneGate(n, d, pi_init, std, g)

        def hook(module, args, kwargs, output, gate=gate):
            x = args[0] if args else kwargs["hidden_states"]
            ctx = output[0] if isinstance(output, tuple) else output
            ctx = gate.apply(x, ctx)
            return (ctx, *output[1:]) if isinstance(output, tuple) else ctx

        att.register_forward_hook(hook, with_kwargs=True)
        att.qexp_gate = HeadFactor(gate)
        gates.append(gate)
    for att in llama:
        cfg = att.config
        n, d = cfg.num_attention_heads, getattr(att, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
        gate = FineTuneGate(n, d, pi_init, std, g)
        seen = {}

        def capture(module, args, kwargs, seen=seen):
            seen["x"] = args[0] if args else kwargs["hidden_states"]

        def scale(module, args, gate=gate, seen=seen):
            return (gate.apply(seen.pop("x"), args[0]), *args[1:])

        att.register_forward_pre_hook(capture, with_kwargs=True)
        att.o_proj.register_forward_pre_hook(scale)
        gates.append(gate)
    model.qexp_gates = gates
    return gates
