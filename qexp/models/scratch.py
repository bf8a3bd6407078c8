"""Transformers built from scratch for pre-training (Bondarenko et al. 2023): a BERT masked LM and a pre-LN OPT causal
LM, each with the attention variant of its ``model.attention`` group (:mod:`.attention`).

``conf/model/*.yaml`` with ``source: scratch`` name an ``arch`` (``bert`` | ``opt``) and an ``architecture`` (layers,
width, heads, FFN width); the vocabulary and the sequence length come from the task's tokenizer and data.  Like the
authors' ``run_mlm.py`` / ``run_clm.py``, the attention projections that the authors' code re-creates after HF has
initialised the model keep PyTorch's default ``nn.Linear`` init (BERT: query/key/value; OPT: q/k/v/out) unless
``init.torch_default_attention: false``; everything else has HF's init (BERT N(0, 0.02), OPT N(0, init_std)).

BERT's variant runs inside :class:`~qexp.models.quant_bert.QuantEncoder` (which owns the encoder forward): the gate
is a submodule of each HF ``attention.self`` (so it is saved with the model) and the softmax is read from
``config.qexp_attention``.  OPT keeps HF's forward; each ``self_attn`` becomes a :class:`VariantOPTAttention`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..quant.modules import act_quantizer
from .attention import AttentionVariant

ARCHS = ("bert", "opt")
ACTIVATIONS = ("relu", "gelu", "gelu_new")   # OPT's FFN; GPT-2 uses gelu_new (tanh approximation)


class ScratchModelError(ValueError):
    pass


def check_arch(model_cfg) -> str:
    arch = str(model_cfg.get("arch"))
    if arch not in ARCHS:
        raise ScratchModelError(f"model.arch={arch!r} is unknown for a model built from scratch; valid: "
                                f"{', '.join(ARCHS)}")
    a = model_cfg.architecture
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"):
        v = a.get(key)
        if not isinstance(v, int) or v < 1:
            raise ScratchModelError(f"model.architecture.{key}={v!r} must be a positive integer")
    act = model_cfg.get("activation")
    if act is not None and (arch != "opt" or act not in ACTIVATIONS):
        raise ScratchModelError(f"model.activation={act!r} is not valid for arch {arch!r}; valid (arch opt): "
                                f"{', '.join(ACTIVATIONS)}")
    if a.hidden_size % a.num_attention_heads:
        raise ScratchModelError(f"model.architecture.hidden_size={a.hidden_size} is not divisible by "
                                f"num_attention_heads={a.num_attention_heads}")
    return arch


def variant_of(model_cfg, seq_length: int) -> AttentionVariant:
    return AttentionVariant.from_cfg(model_cfg.get("attention"), seq_length)


def hf_config(model_cfg, vocab_size: int, seq_length: int, special: dict):
    """The HF config of a from-scratch model (vocabulary and special token ids from the tokenizer)."""
    arch, a = check_arch(model_cfg), model_cfg.architecture
    variant = variant_of(model_cfg, seq_length)
    dropout = float(model_cfg.get("dropout", 0.1))
    if arch == "bert":
        from transformers import BertConfig

        config = BertConfig(vocab_size=vocab_size, hidden_size=a.hidden_size, num_hidden_layers=a.num_hidden_layers,
                            num_attention_heads=a.num_attention_heads, intermediate_size=a.intermediate_size,
                            max_position_embeddings=seq_length,
                            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                            pad_token_id=special.get("pad_token_id", 0))
    else:
        from transformers import OPTConfig

        config = OPTConfig(vocab_size=vocab_size, hidden_size=a.hidden_size, num_hidden_layers=a.num_hidden_layers,
                           ffn_dim=a.intermediate_size, num_attention_heads=a.num_attention_heads,
                           max_position_embeddings=seq_length, word_embed_proj_dim=a.hidden_size,
                           do_layer_norm_before=True, dropout=dropout,
                           attention_dropout=float(model_cfg.get("attention_dropout", 0.0)),
                           init_std=float(model_cfg.get("init_std", 0.006)),
                           activation_function=str(model_cfg.get("activation", "relu")), **special)
    config._attn_implementation = "eager"
    config.qexp_attention = variant.as_dict()
    config.qexp_arch = arch
    return config


def build(model_cfg, vocab_size: int, seq_length: int, special: dict, seed: int) -> nn.Module:
    """A freshly initialised HF model (``BertForMaskedLM`` or ``OPTForCausalLM``) with the attention variant."""
    from transformers import set_seed

    config = hf_config(model_cfg, vocab_size, seq_length, special)
    set_seed(int(seed))
    init = model_cfg.get("init") or {}
    model = _assemble(config, bool(init.get("torch_default_attention", True)))
    if init.get("scaled_residual"):
        scale_residual_init(model, config)
    return model


def scale_residual_init(model: nn.Module, config) -> None:
    """GPT-2's init of the projections that write into the residual stream (attention output, second FFN linear):
    N(0, init_std / sqrt(2 * n_layers)) (Radford et al. 2019, Sec. 2.3; nanoGPT's ``c_proj`` init)."""
    if config.qexp_arch != "opt":
        raise ScratchModelError("model.init.scaled_residual applies to arch opt (the GPT-2-style decoder) only")
    std = config.init_std / (2 * config.num_hidden_layers) ** 0.5
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            for lin in (layer.self_attn.out_proj, layer.fc2):
                lin.weight.normal_(0.0, std)


def _assemble(config, default_attention_init: bool) -> nn.Module:
    variant = AttentionVariant(**config.qexp_attention)
    heads, d_head = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    if config.qexp_arch == "bert":
        from transformers import BertForMaskedLM

        model = BertForMaskedLM(config)
        for layer in model.bert.encoder.layer:
            sa = layer.attention.self
            if default_attention_init:
                for lin in (sa.query, sa.key, sa.value):
                    lin.reset_parameters()
            gate = variant.make_gate(heads, d_head)
            if gate is not None:
                sa.qexp_gate = gate
        return model
    from transformers import OPTForCausalLM

    model = OPTForCausalLM(config)
    for i, layer in enumerate(model.model.decoder.layers):
        new = VariantOPTAttention(config, i, variant)
        if not default_attention_init:
            new.load_state_dict(layer.self_attn.state_dict(), strict=False)
        layer.self_attn = new
    return model


def plain_state(model: nn.Module) -> dict:
    """The HF model's own state (``QuantDecoder`` wraps linears in place: ``<linear>.inner.weight`` becomes
    ``<linear>.weight`` again), each shared tensor once (tied embeddings)."""
    out, seen = {}, set()
    for key, t in model.state_dict().items():
        ptr = (t.data_ptr(), tuple(t.shape))
        if ptr in seen:
            continue
        seen.add(ptr)
        out[key.replace(".inner.", ".")] = t.detach().contiguous().cpu()
    return out


def save(model: nn.Module, folder: Path) -> None:
    """The weights (shared tensors stored once) and the config (with the variant) in ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(folder))
    save_file(plain_state(model), str(folder / "model.safetensors"), metadata={"format": "pt"})


def checkpoint_config(folder: Path, variant: AttentionVariant | None = None):
    """The HF config of a checkpoint written by :func:`save`; refused when it is not one, or when ``variant`` (the
    run's) differs from the attention it was trained with."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder))
    saved = getattr(config, "qexp_attention", None)
    if saved is None:
        raise ScratchModelError(f"{folder} is not a qexp from-scratch checkpoint (its config.json has no "
                                f"qexp_attention)")
    if variant is not None and AttentionVariant(**saved) != variant:
        raise ScratchModelError(f"checkpoint {folder} was trained with attention {AttentionVariant(**saved)}, but "
                                f"the run asks for {variant}; pick the model.attention it was trained with")
    return config


def load(folder: Path, variant: AttentionVariant | None = None) -> nn.Module:
    """A model saved by :func:`save`; ``variant`` (the run's config) must be the one it was trained with."""
    from safetensors.torch import load_file

    config = checkpoint_config(folder, variant)
    config._attn_implementation = "eager"
    model = _assemble(config, True)
    load_plain_state(model, load_file(str(folder / "model.safetensors")), folder)
    return model


def load_plain_state(model: nn.Module, state: dict, folder: Path) -> None:
    """Load a :func:`plain_state` into ``model`` and re-tie it; a key may be missing only when it is one tensor with a
    stored key (tied embeddings, stored once), and no key may be left over."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    current = model.state_dict()
    stored = {current[k].data_ptr() for k in state if k in current}
    untied = sorted(k for k in missing if current[k].data_ptr() not in stored)
    if unexpected or untied:
        raise ScratchModelError(f"checkpoint {folder} does not fit its config: missing {untied}, unexpected "
                                f"{sorted(unexpected)}")


class VariantOPTAttention(nn.Module):
    """OPT self-attention (HF's parameters and call signature, eager) with the clipped softmax and the gate, and the
    two activation sites of the attention matrix: ``decoder.layer.{i}.attn.softmax_input`` (scores, before the mask)
    and ``.softmax_output`` (probabilities).  The gate multiplies each head's context before ``out_proj``, whose input
    quantizer then sees the gated context."""

    def __init__(self, config, layer_idx: int, variant: AttentionVariant):
        super().__init__()
        self.config, self.layer_idx, self.variant = config, layer_idx, variant
        self.embed_dim, self.num_heads = config.hidden_size, config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim ** -0.5
        self.dropout = config.attention_dropout
        self.is_causal = True
        bias = config.enable_bias
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=bias)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=bias)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=bias)
        self.qexp_gate = variant.make_gate(self.num_heads, self.head_dim)
        self.softmax_input = act_quantizer(f"decoder.layer.{layer_idx}.attn.softmax_input")
        self.softmax_output = act_quantizer(f"decoder.layer.{layer_idx}.attn.softmax_output")

    def _heads(self, x, b):
        return x.view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden_states, past_key_values=None, attention_mask=None, layer_head_mask=None,
                output_attentions=False, cache_position=None, **kwargs):
        b, t, _ = hidden_states.shape
        q = self._heads(self.q_proj(hidden_states) * self.scaling, b)
        k, v = self._heads(self.k_proj(hidden_states), b), self._heads(self.v_proj(hidden_states), b)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx, {"cache_position": cache_position})
        scores = self.softmax_input(torch.matmul(q, k.transpose(-1, -2)))
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = self.softmax_output(self.variant.probabilities(scores.float()).to(q.dtype))
        if layer_head_mask is not None:
            probs = layer_head_mask.view(1, -1, 1, 1) * probs
        ctx = torch.matmul(nn.functional.dropout(probs, p=self.dropout, training=self.training), v)
        if self.qexp_gate is not None:
            ctx = ctx * self.qexp_gate(hidden_states)
        out = self.out_proj(ctx.transpose(1, 2).reshape(b, t, -1))
        return out, (probs if output_attentions else None)


def metric_modules(wrapper: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """The tensors of the outlier metrics (Bondarenko et al. 2023, the authors' validate scripts): name -> (module
    whose output it is, role).  BERT (:class:`QuantEncoder`), per layer: ``ffn_output`` (FFN output projection),
    ``residual`` (FFN input + output = the output LayerNorm's input) and ``ln_output`` (the layer output).  OPT
    (:class:`QuantDecoder`): the authors' ACT_KEYS -- per layer ``residual`` (the decoder layer's output, the residual
    stream), ``fc2``, ``ffn_ln`` (final_layer_norm), ``attn_out`` (self_attn.out_proj), ``attn_ln``
    (self_attn_layer_norm) -- and the decoder's final LayerNorm.  A Llama-style decoder (``model.layers``): the same
    roles on its decoder-layer outputs, ``mlp.down_proj``, ``post_attention_layernorm``, ``self_attn.o_proj``,
    ``input_layernorm`` and the final ``norm``."""
    out: dict[str, tuple[nn.Module, str]] = {}
    if hasattr(wrapper, "layers"):  # QuantEncoder
        for i, layer in enumerate(wrapper.layers):
            p = f"encoder.layer.{i}"
            out[f"{p}.ffn.output"] = (layer.ffn_output, "ffn_output")
            out[f"{p}.ffn.residual_sum"] = (layer.ffn_residual_sum, "residual")
            out[f"{p}.output"] = (layer.output_ln, "ln_output")
        return out
    inner = wrapper.model.model
    if not hasattr(inner, "decoder"):   # a Llama-style decoder (SmolLM2; continued pre-training): the same roles
        for i, layer in enumerate(inner.layers):
            p = f"model.layers.{i}"
            out[p] = (layer, "residual")
            out[f"{p}.mlp.down_proj"] = (layer.mlp.down_proj, "fc2")
            out[f"{p}.post_attention_layernorm"] = (layer.post_attention_layernorm, "ffn_ln")
            out[f"{p}.self_attn.o_proj"] = (layer.self_attn.o_proj, "attn_out")
            out[f"{p}.input_layernorm"] = (layer.input_layernorm, "attn_ln")
        out["model.norm"] = (inner.norm, "final_ln")
        return out
    decoder = inner.decoder
    for i, layer in enumerate(decoder.layers):
        p = f"decoder.layers.{i}"
        out[p] = (layer, "residual")
        out[f"{p}.fc2"] = (layer.fc2, "fc2")
        out[f"{p}.final_layer_norm"] = (layer.final_layer_norm, "ffn_ln")
        out[f"{p}.self_attn.out_proj"] = (layer.self_attn.out_proj, "attn_out")
        out[f"{p}.self_attn_layer_norm"] = (layer.self_attn_layer_norm, "attn_ln")
    if decoder.final_layer_norm is not None:
        out["decoder.final_layer_norm"] = (decoder.final_layer_norm, "final_ln")
    return out


def probability_sites(wrapper: nn.Module) -> list[nn.Module]:
    """Per layer, the module whose output is the attention probabilities (B, H, T, T) (the ``softmax_output`` site)."""
    if hasattr(wrapper, "layers"):  # QuantEncoder
        return [layer.attn.softmax_output for layer in wrapper.layers]
    return [layer.self_attn.softmax_output for layer in wrapper.model.model.decoder.layers
            if isinstance(layer.self_attn, VariantOPTAttention)]
