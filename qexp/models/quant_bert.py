"""A quantizable BERT-family encoder (BERT, RoBERTa, MiniLM, ...) with every activation site of Bondarenko et al.
2021, Figure 1, under a stable dotted name.

The wrapper owns the forward computation and borrows the HF model's parameters, so the site list does not depend on
HF's attention implementation (eager, SDPA, ...).  With every quantizer off it computes exactly what HF's eager
attention computes (tested).  Depth, width and heads come from the HF config.

Activation sites (13 per layer; 161 for a 12-layer model with pooler and classifier):

    embeddings.sum_token_type       word + token-type embeddings
    embeddings.sum                  ... + position embeddings
    embeddings.ln                   embedding LayerNorm output
    encoder.layer.{i}.attn.query | key | value      projections
    encoder.layer.{i}.attn.softmax_input            Q K^T / sqrt(d_head), before the mask
    encoder.layer.{i}.attn.softmax_output           attention probabilities
    encoder.layer.{i}.attn.context                  P V, heads merged
    encoder.layer.{i}.attn.output                   attention output projection
    encoder.layer.{i}.attn.residual_sum             projection + layer input
    encoder.layer.{i}.ffn.input                     attention LayerNorm output = FFN input
    encoder.layer.{i}.ffn.intermediate              GELU(x W1)
    encoder.layer.{i}.ffn.output                    FFN output projection
    encoder.layer.{i}.ffn.residual_sum              FFN output + FFN input
    encoder.layer.{i}.output                        output LayerNorm = layer output
    pooler                                          tanh(W h_[CLS]) (RoBERTa: the head's dense layer)
    classifier                                      logits

Weight sites: ``embeddings.{word,position,token_type,ln}.weight``,
``encoder.layer.{i}.attn.{query,key,value,output,ln}.weight``, ``encoder.layer.{i}.ffn.{intermediate,output,ln}.weight``,
``pooler.weight``, ``classifier.weight``.  Biases are never quantized.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..quant.modules import QEmbedding, QLayerNorm, QLinear, act_quantizer
from .attention import AttentionVariant


@dataclass
class EncoderOutput(ModelOutput):
    """HF's output convention (attribute and key access, ``None`` fields dropped), so the HF Trainer can train it."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class QEmbeddings(nn.Module):
    def __init__(self, hf, padding_idx: int | None):
        super().__init__()
        self.word = QEmbedding(hf.word_embeddings, "embeddings.word")
        self.position = QEmbedding(hf.position_embeddings, "embeddings.position")
        self.token_type = QEmbedding(hf.token_type_embeddings, "embeddings.token_type")
        self.sum_token_type = act_quantizer("embeddings.sum_token_type")
        self.sum = act_quantizer("embeddings.sum")
        self.ln = QLayerNorm(hf.LayerNorm, "embeddings.ln", "embeddings.ln")
        self.dropout = hf.dropout
        self.padding_idx = padding_idx  # RoBERTa numbers positions after the padding index

    def forward(self, input_ids, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if self.padding_idx is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        else:
            mask = input_ids.ne(self.padding_idx).long()
            positions = torch.cumsum(mask, dim=1) * mask + self.padding_idx
        x = self.sum_token_type(self.word(input_ids) + self.token_type(token_type_ids))
        x = self.sum(x + self.position(positions))
        return self.dropout(self.ln(x))


class QAttention(nn.Module):
    def __init__(self, layer, prefix: str, config):
        super().__init__()
        sa, out = layer.attention.self, layer.attention.output
        self.n_heads = config.num_attention_heads
        self.d_head = config.hidden_size // self.n_heads
        self.query = QLinear(sa.query, f"{prefix}.query")
        self.key = QLinear(sa.key, f"{prefix}.key")
        self.value = QLinear(sa.value, f"{prefix}.value")
        self.softmax_input = act_quantizer(f"{prefix}.softmax_input")
        self.softmax_output = act_quantizer(f"{prefix}.softmax_output")
        self.context = act_quantizer(f"{prefix}.context")
        self.output = QLinear(out.dense, f"{prefix}.output")
        self.residual_sum = act_quantizer(f"{prefix}.residual_sum")
        self.probs_dropout = sa.dropout
        self.dropout = out.dropout
        # Bondarenko et al. 2023 variants (models built from scratch, qexp.models.scratch): the softmax from the
        # config, the gate (floating point, never quantized) from the HF module that owns its parameters
        self.variant = AttentionVariant(**(getattr(config, "qexp_attention", None) or {}))
        self.gate = getattr(sa, "qexp_gate", None)

    def _heads(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, x, mask):
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        # in place where the tensor is the forward's own (the product; the scores at inference while nothing holds
        # them): the same values, two passes and two allocations of (B, H, T, T) fewer (issue 31 #5)
        scores = self.softmax_input(torch.matmul(q, k.transpose(-1, -2)).div_(math.sqrt(self.d_head)))
        site = self.softmax_input
        owned = not torch.is_grad_enabled() and site.state in ("off", "fixed") and not site.observed
        probs = self.softmax_output(self.variant.probabilities(scores.add_(mask) if owned else scores + mask))
        ctx = torch.matmul(self.probs_dropout(probs), v)
        if self.gate is not None:  # per (head, token), before the context quantizer (the authors' BERT)
            ctx = ctx * self.gate(x)
        ctx = self.context(ctx.transpose(1, 2).reshape(x.shape))
        return self.residual_sum(self.dropout(self.output(ctx)) + x)


class QLayer(nn.Module):
    def __init__(self, layer, prefix: str, config):
        super().__init__()
        self.attn = QAttention(layer, f"{prefix}.attn", config)
        # the attention LayerNorm's output is the FFN input
        self.attn_ln = QLayerNorm(layer.attention.output.LayerNorm, f"{prefix}.ffn.input", f"{prefix}.attn.ln")
        self.intermediate = QLinear(layer.intermediate.dense, f"{prefix}.ffn.intermediate",
                                    act=layer.intermediate.intermediate_act_fn)
        self.ffn_output = QLinear(layer.output.dense, f"{prefix}.ffn.output")
        self.ffn_residual_sum = act_quantizer(f"{prefix}.ffn.residual_sum")
        self.output_ln = QLayerNorm(layer.output.LayerNorm, f"{prefix}.output", f"{prefix}.ffn.ln")
        self.dropout = layer.output.dropout

    def forward(self, x, mask):
        h = self.attn_ln(self.attn(x, mask))
        y = self.ffn_residual_sum(self.dropout(self.ffn_output(self.intermediate(h))) + h)
        return self.output_ln(y)


def _parts(hf):
    """(base encoder, pooler dense, classifier linear, head dropout) of a supported HF model."""
    base = getattr(hf, "base_model", hf)
    head = getattr(hf, "classifier", None)
    if head is None:  # bare encoder (AutoModel)
        pooler = getattr(base, "pooler", None)
        return base, (pooler.dense if pooler is not None else None), None, None
    if isinstance(head, nn.Linear):  # BERT: pooler + dropout + linear
        return base, base.pooler.dense, head, hf.dropout
    if hasattr(head, "out_proj"):  # RoBERTa: dense + tanh + out_proj on <s>
        return base, head.dense, head.out_proj, head.dropout
    raise TypeError(f"unsupported classification head {type(head).__name__}")


class QuantEncoder(nn.Module):
    """Quantizable wrapper of a BERT-family HF model (``*ForSequenceClassification`` or a bare encoder)."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = [hf]  # a list so the HF module is not registered twice
        self.config = hf.config
        base, pooler, classifier, head_dropout = _parts(hf)
        if not hasattr(base, "encoder") or not hasattr(base.encoder, "layer"):
            raise TypeError(f"{type(hf).__name__} is not a BERT-family encoder (no encoder.layer)")
        padding_idx = getattr(base.embeddings, "padding_idx", None)
        self.embeddings = QEmbeddings(base.embeddings, padding_idx)
        self.layers = nn.ModuleList(QLayer(layer, f"encoder.layer.{i}", self.config)
                                    for i, layer in enumerate(base.encoder.layer))
        self.num_labels = getattr(self.config, "num_labels", None)
        self.pooler = QLinear(pooler, "pooler", act=torch.tanh) if (pooler is not None and classifier is not None) else None
        self.classifier = QLinear(classifier, "classifier") if classifier is not None else None
        self.head_dropout = head_dropout if head_dropout is not None else nn.Identity()
        # a masked-LM head (BertForMaskedLM.cls) stays in floating point, as in Bondarenko et al. 2023
        self.mlm_head = getattr(hf, "cls", None) if classifier is None else None

    @property
    def hf_model(self) -> nn.Module:
        """The HF model whose parameters the wrapper borrows (as :class:`QuantDecoder` names it)."""
        return self.hf[0]

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks in order (LKD distils them one by one)."""
        return self.layers

    def set_attention_dropout(self, p: float) -> None:
        """The self-attention (probabilities) dropout rate, a QAT hyper-parameter (Bondarenko et al. 2021, Table 10)."""
        for layer in self.layers:
            layer.attn.probs_dropout.p = float(p)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **_):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        # the additive mask HF's eager attention uses
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, mask)
        if self.mlm_head is not None:
            return self._masked_lm(x, labels)
        if self.classifier is None:
            return EncoderOutput(last_hidden_state=x)
        h = x[:, 0]
        if self._roberta_head:  # RoBERTa's head applies dropout before its dense layer too
            h = self.head_dropout(h)
        logits = self.classifier(self.head_dropout(self.pooler(h)))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits, labels)
        return EncoderOutput(last_hidden_state=x, logits=logits, loss=loss)

    def _masked_lm(self, x, labels):
        """Logits (and the loss) at the labelled positions only when labels are given (-100 = not predicted): the
        vocabulary projection of unmasked tokens would be wasted work."""
        if labels is None:
            return EncoderOutput(last_hidden_state=x, logits=self.mlm_head(x))
        keep = labels.ne(-100)
        logits = self.mlm_head(x[keep])
        loss = nn.functional.cross_entropy(logits, labels[keep]) if keep.any() else logits.sum() * 0.0
        return EncoderOutput(last_hidden_state=x, logits=logits, loss=loss)

    @property
    def _roberta_head(self) -> bool:
        return hasattr(getattr(self.hf[0], "classifier", None), "out_proj")
