"""Evaluation of a language model being pre-trained (Bondarenko et al. 2023): perplexity and the outlier metrics.

- Masked LM inputs: HF's ``DataCollatorForLanguageModeling`` (p = 0.15; 80 % [MASK], 10 % random, 10 % kept).  The
  evaluation masks are drawn **once** from ``eval_mask_seed`` in a forked RNG, so every evaluation of every model (FP,
  W8A8, any step) scores the same masked positions.  (The authors scored FP with seed 1000 and INT8 with 2000, so
  their FP and INT8 masks differ: a documented deviation.)
- Perplexity = exp(mean over evaluation batches of the batch's mean token loss), the authors' definition.
- Outliers, on the tensors of :func:`qexp.models.scratch.metric_modules`: per tensor, the per-sample inf-norm
  (max |x| over the flattened T x d) averaged over samples, and the per-sample kurtosis (unbiased std, not excess,
  + 1e-6, :func:`qexp.quant.analysis.kurtosis`) averaged over samples.  Summaries: ``max_inf_norm`` = max over the
  ``residual`` tensors (BERT: the FFN residual sum before the output LayerNorm; OPT: the decoder-layer outputs -- the
  reading of the paper's "max inf-norm" the authors' logs support; issue #5 of their repository asks which BERT
  tensor it is), ``max_inf_norm_all`` over every tensor, ``avg_kurtosis``/``max_kurtosis`` over the authors'
  kurtosis tensors (BERT: FFN output and layer output; OPT: every tensor).
- "No-op" heads (the paper's Sec. 3): per layer and head, the mean attention probability mass on delimiter keys
  (``delimiter_ids``: [CLS] / [SEP] / "." / "," for BERT, </s> / "." / "," for OPT), and the probability map of the
  first evaluation sequence's first ``MAP_TOKENS`` tokens (figures).
"""
from __future__ import annotations


import torch

from ..models.scratch import metric_modules, probability_sites
from ..quant.analysis import OutlierAccumulator
from .perplexity import perplexity_of

MAP_TOKENS = 24
KURTOSIS_ROLES = {"bert": ("ffn_output", "ln_output"), "opt": ("residual", "fc2", "ffn_ln", "attn_out", "attn_ln",
                                                                 "final_ln")}


def collator(tokenizer, objective: str, mlm_probability: float = 0.15):
    from transformers import DataCollatorForLanguageModeling

    if objective == "mlm":
        return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability)
    return DataCollatorForLanguageModeling(tokenizer, mlm=False)


def fixed_batches(blocks, tokenizer, objective: str, batch_size: int, seed: int, mlm_probability: float = 0.15,
                  indices=None) -> list[dict]:
    """``blocks`` (or the rows ``indices``) collated into batches once, the masks drawn from ``seed`` in a forked RNG."""
    collate = collator(tokenizer, objective, mlm_probability)
    rows = list(range(len(blocks))) if indices is None else [int(i) for i in indices]
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for i in range(0, len(rows), batch_size):
            out.append(dict(collate([blocks[j] for j in rows[i:i + batch_size]])))
    return out


def arch_of(wrapper) -> str:
    return "bert" if hasattr(wrapper, "layers") else "opt"


@torch.no_grad()
def evaluate(wrapper, batches: list[dict], device: str, bar=None, delimiter_ids=None) -> dict:
    """Loss, perplexity and outlier metrics of ``wrapper`` (eval mode inside; its mode restored after); with
    ``delimiter_ids`` also the attention mass on delimiters per head and the first sequence's attention maps."""
    arch, modules = arch_of(wrapper), metric_modules(wrapper)
    acc, state = OutlierAccumulator(), {"b": 1}
    heads = _HeadStats(delimiter_ids) if delimiter_ids is not None else None

    def hook(name):
        def fn(_m, _i, out):
            x = out[0] if isinstance(out, tuple) else out
            acc.add(name, x.detach().reshape(state["b"], -1))
        return fn

    handles = [m.register_forward_hook(hook(name)) for name, (m, _) in modules.items()]
    if heads is not None:
        handles += [site.register_forward_hook(heads.hook(i)) for i, site in enumerate(probability_sites(wrapper))]
    was_training = wrapper.training
    wrapper.eval()
    losses = []
    try:
        for batch in (bar(batches, "evaluate", len(batches)) if bar else batches):
            batch = {k: v.to(device) for k, v in batch.items() if k != "special_tokens_mask"}
            state["b"] = batch["input_ids"].shape[0]
            if heads is not None:
                heads.ids = batch["input_ids"]
            losses.append(float(wrapper(**batch).loss))
    finally:
        for h in handles:
            h.remove()
        wrapper.train(was_training)
    loss = sum(losses) / len(losses)
    per_tensor = {name: {"role": role, "inf_norm": acc.inf_norm(name), "kurtosis": acc.kurtosis(name)}
                  for name, (_, role) in modules.items()}
    out = {"loss": loss, "perplexity": perplexity_of(loss), "batches": len(batches),
           "sequences": sum(int(b["input_ids"].shape[0]) for b in batches),
           **summarize(per_tensor, arch), "per_tensor": per_tensor}
    if heads is not None:
        out.update(heads.result())
    return out


class _HeadStats:
    """Attention mass on delimiter keys per (layer, head), and the first sequence's maps."""

    def __init__(self, delimiter_ids):
        self.delims = torch.tensor(sorted(set(int(i) for i in delimiter_ids)))
        self.mass, self.n, self.maps, self.first_ids, self.ids = {}, {}, {}, None, None

    def hook(self, layer):
        def fn(_m, _i, probs):
            keys = torch.isin(self.ids, self.delims.to(self.ids.device)).to(probs.dtype)   # (B, T)
            m = (probs * keys[:, None, None, :]).sum(-1).mean(-1)                          # (B, H)
            self.mass[layer] = self.mass.get(layer, 0) + m.sum(0).double().cpu()
            self.n[layer] = self.n.get(layer, 0) + probs.shape[0]
            if layer not in self.maps:
                self.maps[layer] = probs[0, :, :MAP_TOKENS, :MAP_TOKENS].detach().float().cpu()
                self.first_ids = self.ids[0, :MAP_TOKENS].tolist()
        return fn

    def result(self) -> dict:
        return {"delimiter_attention": [[round(float(v), 4) for v in self.mass[i] / self.n[i]]
                                        for i in sorted(self.mass)],
                "attention_maps": {"token_ids": self.first_ids,
                                   "probs": [[[[round(float(p), 3) for p in row] for row in head] for head in m]
                                             for _, m in sorted(self.maps.items())]}}


def summarize(per_tensor: dict, arch: str) -> dict:
    def vals(key, roles=None):
        return [v[key] for v in per_tensor.values() if roles is None or v["role"] in roles]

    kurt = vals("kurtosis", KURTOSIS_ROLES[arch])
    return {"max_inf_norm": max(vals("inf_norm", ("residual",))), "max_inf_norm_all": max(vals("inf_norm")),
            "avg_kurtosis": sum(kurt) / len(kurt), "max_kurtosis": max(kurt)}
