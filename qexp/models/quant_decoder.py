"""A quantizable wrapper of any Hugging Face causal LM (GPT-2, OPT, GPT-NeoX/Pythia, Llama/SmolLM, ...).

Unlike :class:`~qexp.models.quant_bert.QuantEncoder`, which re-implements the BERT forward to expose every activation
site of Bondarenko et al. 2021, the decoder wrapper keeps HF's own forward (every attention implementation, rotary
embeddings, KV caches, ``generate``) and replaces each linear layer in place by a :class:`~qexp.quant.modules.QLinear`
that owns two sites -- the ones ZeroQuant quantizes:

    decoder.layer.{i}.attn.<leaf>.weight | .input     linears under the block's attention module
    decoder.layer.{i}.ffn.<leaf>.weight  | .input     every other linear of the block (MLP / FFN)
    lm_head.weight | lm_head.input                    the output embedding (GPT-NeoX's ``embed_out`` too)
    <HF path>.weight | .input                         any other linear outside the blocks (OPT's project_in/out)

``<leaf>`` is the HF attribute name (``q_proj``, ``c_attn``, ``fc1``, ``query_key_value``, ``gate_proj``, ...), so
``*.ffn.*.weight`` selects the FFN weights of every architecture (ZeroQuant's W4/8 split) and
``decoder.layer.*.attn.*.input`` the attention inputs.  GPT-2's ``Conv1D`` (weight stored ``(in, out)``) becomes an
``nn.Linear`` with the transposed weight first (DeepSpeed's ``convert_conv1d_to_linear`` does the same).  Embedding
lookups, norms, rotary embeddings, attention score/probability matmuls and residual adds stay in floating point.
With every quantizer off the wrapped model computes what the HF model computed (tested).
"""
from __future__ import annotations

import torch
from torch import nn

from ..quant.modules import QLinear

_ATTENTION = ("attn", "attention", "self_attn", "self_attention", "encoder_attn")


class DecoderError(TypeError):
    pass


def _conv1d_to_linear(conv) -> nn.Linear:
    w = conv.weight  # (in, out)
    lin = nn.Linear(w.shape[0], w.shape[1], bias=conv.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w.t())
        if conv.bias is not None:
            lin.bias.copy_(conv.bias)
    return lin


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def find_blocks(hf: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``nn.ModuleList`` of decoder blocks: the one whose length is the config's layer count."""
    n = getattr(hf.config, "num_hidden_layers", None) or getattr(hf.config, "n_layer", None)
    found = [(name, m) for name, m in hf.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not found:
        raise DecoderError(f"{type(hf).__name__}: no list of {n} decoder blocks found; is it a causal LM?")
    return found[0]


def site_name(block_index: int, rel_path: str) -> str:
    parts = rel_path.split(".")
    group = "attn" if any(p in _ATTENTION for p in parts[:-1]) else "ffn"
    return f"decoder.layer.{block_index}.{group}.{parts[-1]}"


class QuantDecoder(nn.Module):
    """Quantizable causal LM.  The HF model is modified in place (its linears become ``QLinear``s) and is what runs:
    ``QuantDecoder(hf)(**batch)`` is ``hf(**batch)``, and ``.hf_model`` can be handed to lm-eval or ``generate``."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.model = hf
        self.config = hf.config
        blocks_path, blocks = find_blocks(hf)
        self.blocks_path = blocks_path
        names: dict[str, str] = {}
        head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
        block_of = {}
        for i, block in enumerate(blocks):
            for rel, m in block.named_modules():
                if rel and _is_linear(m):
                    block_of[f"{blocks_path}.{i}.{rel}"] = (i, rel)
        for path, m in list(hf.named_modules()):
            if not path or not _is_linear(m) or isinstance(m, QLinear):
                continue
            if path in block_of:
                i, rel = block_of[path]
                name = site_name(i, rel)
                if name in names.values():  # two linears with one leaf name in one group: keep the full path
                    name = f"decoder.layer.{i}.{rel}"
            else:
                name = "lm_head" if m is head else path
            names[path] = name
        for path, name in names.items():
            parent_path, _, attr = path.rpartition(".")
            parent = hf.get_submodule(parent_path) if parent_path else hf
            inner = getattr(parent, attr)
            if type(inner).__name__ == "Conv1D":
                inner = _conv1d_to_linear(inner)
            setattr(parent, attr, QLinear(inner, name, quantize_output=False))
        self.hf_paths = names  # HF module path -> site name

    @property
    def hf_model(self) -> nn.Module:
        return self.model

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.get_submodule(self.blocks_path)

    def forward(self, input_ids, attention_mask=None, labels=None, **kw):
        kw.setdefault("use_cache", False)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kw)
