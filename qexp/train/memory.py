"""Training memory by component (Chitsaz et al. 2024, Appendix B, Figures 2/14/15): parameters, gradients, optimizer
states and activations of a GPT-2-style decoder, by an analytic model and by measurement.

Analytic model (bytes; N = batch x seq tokens, d width, f FFN width, h heads, L layers, V vocabulary):

- parameters P = V d + positions d + L (4 d^2 + 4 d + 2 f d + f + d + 4 d) + 2 d   (tied output embedding)
- gradients P, AdamW states 2 P (each at its own bytes per element);
- activations, what autograd saves for the backward (counted for the eager implementation qexp trains, checked
  against a measurement): per layer 8 N d (two LayerNorm inputs, the Q/K/V input, Q, K, V, the out-projection and
  FFN inputs) + 2 N f (the GELU input and the second linear's input) + 4 N (LayerNorm statistics) + B h T^2 (the
  softmax output; ``attention="flash"``: FlashAttention keeps only 2 N h statistics, as the paper trained); plus the
  final LayerNorm (N d + 2 N), the LM head input (N d), the log-softmax output (N V), 3 N int64 token ids and the
  loss' 4-byte divisor;
- peak: the larger of (a) the start of the backward -- parameters, optimizer states, all activations and the logits'
  gradient (N V) -- and (b) its end -- parameters, optimizer states, all gradients and the first layer's activations
  (the paper's description of where the peak moves).

Measurement (:func:`measure`, any device): parameter, gradient and optimizer-state bytes summed over their storages
after a real step; activations as the bytes of every distinct storage autograd saves during the forward
(``torch.autograd.graph.saved_tensors_hooks``), parameters excluded; on CUDA also ``max_memory_allocated``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

GPT2 = {"gpt2_small": (12, 768, 12), "gpt2_medium": (24, 1024, 16), "gpt2_large": (36, 1280, 20)}


@dataclass(frozen=True)
class DecoderShape:
    layers: int
    d: int
    heads: int
    ffn: int
    vocab: int = 50257
    positions: int = 1024

    @classmethod
    def gpt2(cls, name: str) -> "DecoderShape":
        if name not in GPT2:
            raise ValueError(f"unknown GPT-2 size {name!r}; valid: {', '.join(GPT2)}")
        L, d, h = GPT2[name]
        return cls(L, d, h, 4 * d)

    @property
    def parameters(self) -> int:
        d, f = self.d, self.ffn
        per_layer = 4 * d * d + 4 * d + 2 * f * d + f + d + 4 * d   # q k v out (+ biases), fc1, fc2, two LayerNorms
        return self.vocab * d + self.positions * d + self.layers * per_layer + 2 * d


def analytic(shape: DecoderShape, batch: int, seq: int, param_bytes: int = 4, act_bytes: int = 4,
             grad_bytes: int | None = None, state_bytes: int = 4, attention: str = "eager") -> dict:
    """Bytes per component and at the peak (see the module docstring)."""
    if attention not in ("eager", "flash"):
        raise ValueError(f"attention={attention!r}; valid: eager, flash")
    s, n = shape, batch * seq
    P = s.parameters
    attn = batch * s.heads * seq * seq if attention == "eager" else 2 * n * s.heads
    layer = act_bytes * (8 * n * s.d + 2 * n * s.ffn + 4 * n + attn)
    head = act_bytes * (2 * n * s.d + 2 * n + n * s.vocab) + 8 * 3 * n + 4   # + the loss' float32 divisor
    acts = s.layers * layer + head
    out = {"parameters": P * param_bytes, "gradients": P * (grad_bytes or param_bytes),
           "optimizer_states": 2 * P * state_bytes, "activations": acts, "logits_gradient": n * s.vocab * act_bytes}
    start = out["parameters"] + out["optimizer_states"] + acts + out["logits_gradient"]
    end = out["parameters"] + out["optimizer_states"] + out["gradients"] + layer
    out["peak"] = max(start, end)
    out["peak_at"] = "backward start" if start >= end else "backward end"
    out["peak_components"] = ({"parameters": out["parameters"], "optimizer_states": out["optimizer_states"],
                               "activations": acts, "gradients": out["logits_gradient"]} if start >= end else
                              {"parameters": out["parameters"], "optimizer_states": out["optimizer_states"],
                               "activations": layer, "gradients": out["gradients"]})
    return out


def savings(components: dict, bits: int, element_bytes: dict) -> dict:
    """Bytes saved at the peak by storing each component with ``bits`` per element instead of its
    ``element_bytes[component]`` (nothing is saved where the component is already that narrow)."""
    return {k: v * max(0.0, 1 - bits / (8 * element_bytes[k])) for k, v in components.items()}


def _nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def measure(model: torch.nn.Module, optimizer, batch: dict) -> dict:
    """One training step of ``model`` on ``batch``, measuring each component (bytes)."""
    params = list(model.parameters())
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in param_ptrs:
            saved.setdefault(st.data_ptr(), st.nbytes())
        return t

    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    activations = sum(saved.values())
    loss.backward()
    gradients = _nbytes(p.grad for p in params if p.grad is not None)
    optimizer.step()
    states = _nbytes(t for st in optimizer.state.values() for t in st.values()
                     if torch.is_tensor(t) and t.dim() > 0)
    out = {"parameters": _nbytes(params), "gradients": gradients, "optimizer_states": states,
           "activations": activations}
    if cuda:
        torch.cuda.synchronize()
        out["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
    optimizer.zero_grad(set_to_none=True)
    return out


def shape_of(hf) -> DecoderShape:
    """The :class:`DecoderShape` of a from-scratch OPT-layout model (qexp.models.scratch)."""
    c = hf.config
    return DecoderShape(c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.ffn_dim, c.vocab_size,
                        c.max_position_embeddings + 2)   # OPT's learned positions carry an offset of 2


def grid(sizes=tuple(GPT2), batches=(1, 2, 4, 8, 16, 32), seqs=(128, 256, 512, 1024), fixed_seq: int = 1024,
         fixed_batch: int = 4, **kw) -> list[dict]:
    """Figures 14 (batch sizes at context 1024) and 15 (sequence lengths at batch 4), analytic."""
    rows = []
    for name in sizes:
        shape = DecoderShape.gpt2(name)
        for figure, pairs in ((14, [(b, fixed_seq) for b in batches]), (15, [(fixed_batch, t) for t in seqs])):
            for b, t in pairs:
                a = analytic(shape, b, t, **kw)
                rows.append({"figure": figure, "model": name, "batch": b, "seq": t, "peak": a["peak"],
                             "peak_at": a["peak_at"], **{f"peak_{k}": v for k, v in a["peak_components"].items()},
                             "shape": asdict(shape)})
    return rows
