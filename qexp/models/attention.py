"""Attention variants of Bondarenko et al. 2023 ("Quantizable Transformers"): clipped softmax and gated attention.

- clipped softmax: ``clip((zeta - gamma) * softmax(x) + gamma, 0, 1)`` with gamma <= 0 <= 1 <= zeta; or, with
  ``alpha``, gamma = -alpha / T where T is the model's sequence length **fixed at construction** (BERT: the MLM
  sequence length, OPT: the block size), as the authors' ``--alpha`` does;
- gated attention: ``output_h = sigmoid(G_h(x)) * softmax(Q_h K_h^T / sqrt(d)) V_h`` per head h and token, where x is
  the attention block's input (BERT: the previous layer's output; pre-LN OPT: the attention LayerNorm's output) and
  head h sees only its own d_head slice of x.  Gate networks (``gate``):

    linear      Linear(d_head -> 1) per head, bias = logit(pi_init)
    mlp         Linear(d_head -> n_hid) - ReLU - Linear(n_hid -> 1) per head (PyTorch's default bias init)
    all_heads   one Linear(d_model -> H) (PyTorch's default bias init)

  The gate weights are plain parameters (einsum), not ``nn.Linear``: no quantizer is ever attached to them (the
  authors keep the gates in floating point).

:class:`AttentionVariant` is the value object a model config's ``attention`` group becomes; with the defaults
(vanilla softmax, no gate) the attention computes exactly what HF's eager attention computes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

SOFTMAXES = ("vanilla", "clipped")
GATES = ("none", "linear", "mlp", "all_heads")


class AttentionConfigError(ValueError):
    pass


def clipped_softmax(x: torch.Tensor, gamma: float, zeta: float, dim: int = -1) -> torch.Tensor:
    """``clip((zeta - gamma) * softmax(x) + gamma, 0, 1)``, the stretch and clip in float32 at least."""
    p = torch.softmax(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim=dim)
    return torch.clamp((zeta - gamma) * p + gamma, 0.0, 1.0).to(x.dtype)


@dataclass(frozen=True)
class AttentionVariant:
    softmax: str = "vanilla"
    gamma: float = 0.0
    zeta: float = 1.0
    gate: str = "none"
    pi_init: float = 0.5
    n_hid: int | None = None   # mlp gate hidden units; None: d_head // 4 (the authors' --attn_gate_mlp)

    @classmethod
    def from_cfg(cls, cfg, seq_length: int | None = None) -> "AttentionVariant":
        """From a model config's ``attention`` mapping (None: vanilla).  ``alpha`` (if given) sets gamma = -alpha / T
        with T = ``seq_length``.  Every bad value is refused here, naming it and the valid range."""
        if cfg is None:
            return cls()
        c = dict(cfg)
        unknown = sorted(set(c) - {"name", "softmax", "gamma", "zeta", "alpha", "gate", "pi_init", "n_hid"})
        if unknown:
            raise AttentionConfigError(f"unknown model.attention option(s) {unknown}; valid: softmax, gamma, zeta, "
                                       f"alpha, gate, pi_init, n_hid")
        softmax, gate = str(c.get("softmax") or "vanilla"), str(c.get("gate") or "none")
        if softmax not in SOFTMAXES:
            raise AttentionConfigError(f"model.attention.softmax={softmax!r} is unknown; valid: {', '.join(SOFTMAXES)}")
        if gate not in GATES:
            raise AttentionConfigError(f"model.attention.gate={gate!r} is unknown; valid: {', '.join(GATES)}")
        for key in ("gamma", "zeta", "alpha", "pi_init"):   # issue 27 #14: "could not convert string to float"
            v = c.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise AttentionConfigError(f"model.attention.{key}={v!r} must be a number")
        gamma, zeta, alpha = float(c.get("gamma") or 0.0), float(c.get("zeta") or 1.0), c.get("alpha")
        if alpha is not None:
            if softmax != "clipped":
                raise AttentionConfigError(f"model.attention.alpha={alpha} needs model.attention.softmax=clipped")
            if c.get("gamma") not in (None, 0, 0.0):
                raise AttentionConfigError(f"model.attention.alpha={alpha} and gamma={c['gamma']} both set gamma; "
                                           f"give one of them")
            if not seq_length:
                raise AttentionConfigError("model.attention.alpha needs the model's sequence length T (gamma = "
                                           "-alpha/T); the task gives none")
            if float(alpha) < 0:
                raise AttentionConfigError(f"model.attention.alpha={alpha} must be >= 0 (gamma = -alpha/T <= 0)")
            gamma = -float(alpha) / int(seq_length)
        if gamma > 0:
            raise AttentionConfigError(f"model.attention.gamma={gamma} must be <= 0 (clipped softmax stretches "
                                       f"downwards to reach exact zeros)")
        if zeta < 1:
            raise AttentionConfigError(f"model.attention.zeta={zeta} must be >= 1 (clipped softmax stretches upwards "
                                       f"to reach exact ones)")
        if softmax == "vanilla" and (gamma != 0 or zeta != 1):
            raise AttentionConfigError(f"model.attention.gamma={gamma}/zeta={zeta} apply to softmax=clipped only, "
                                       f"but softmax=vanilla")
        pi_init, n_hid = float(c.get("pi_init", 0.5)), c.get("n_hid")
        if not 0 < pi_init < 1:
            raise AttentionConfigError(f"model.attention.pi_init={pi_init} must lie in (0, 1) (the gate's initial "
                                       f"open probability; bias = logit(pi_init))")
        if n_hid is not None and (int(n_hid) != n_hid or int(n_hid) < 1):
            raise AttentionConfigError(f"model.attention.n_hid={n_hid} must be a positive integer")
        return cls(softmax, gamma, zeta, gate, pi_init, None if n_hid is None else int(n_hid))

    @property
    def vanilla(self) -> bool:
        return self.softmax == "vanilla" and self.gate == "none"

    def as_dict(self) -> dict:
        return asdict(self)

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        if self.softmax == "clipped":
            return clipped_softmax(scores, self.gamma, self.zeta)
        return torch.softmax(scores, dim=-1)

    def make_gate(self, n_heads: int, d_head: int) -> "HeadGate | None":
        return None if self.gate == "none" else HeadGate(self.gate, n_heads, d_head, self.pi_init,
                                                               self.n_hid or max(1, d_head // 4))


def _uniform_(t: torch.Tensor, fan_in: int) -> None:
    """PyTorch's default ``nn.Linear`` init (kaiming-uniform, a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(t, -bound, bound)


class HeadGate(nn.Module):
    """Per (head, token) gate probabilities ``sigmoid(G(x))`` of shape (B, H, T, 1) from the block input x (B, T, D)."""

    def __init__(self, kind: str, n_heads: int, d_head: int, pi_init: float = 0.5, n_hid: int = 16):
        super().__init__()
        self.kind, self.n_heads, self.d_head = kind, n_heads, d_head
        if kind == "linear":
            self.weight = nn.Parameter(torch.empty(n_heads, d_head))
            self.bias = nn.Parameter(torch.full((n_heads,), math.log(pi_init / (1 - pi_init))))
            _uniform_(self.weight, d_head)
        elif kind == "mlp":
            self.w1 = nn.Parameter(torch.empty(n_heads, d_head, n_hid))
            self.b1 = nn.Parameter(torch.empty(n_heads, n_hid))
            self.w2 = nn.Parameter(torch.empty(n_heads, n_hid))
            self.bias = nn.Parameter(torch.empty(n_heads))
            for t, fan in ((self.w1, d_head), (self.b1, d_head), (self.w2, n_hid), (self.bias, n_hid)):
                _uniform_(t, fan)
        elif kind == "all_heads":
            self.weight = nn.Parameter(torch.empty(n_heads, n_heads * d_head))
            self.bias = nn.Parameter(torch.empty(n_heads))
            _uniform_(self.weight, n_heads * d_head)
            _uniform_(self.bias, n_heads * d_head)
        else:
            raise AttentionConfigError(f"gate {kind!r} is unknown; valid: {', '.join(GATES[1:])}")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if self.kind == "all_heads":
            return torch.einsum("btd,hd->bht", x, self.weight) + self.bias[None, :, None]
        xh = x.view(b, t, self.n_heads, self.d_head)
        if self.kind == "linear":
            return torch.einsum("bthd,hd->bht", xh, self.weight) + self.bias[None, :, None]
        hid = torch.relu(torch.einsum("bthd,hdn->bhtn", xh, self.w1) + self.b1[None, :, None, :])
        return torch.einsum("bhtn,hn->bht", hid, self.w2) + self.bias[None, :, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))[..., None]
