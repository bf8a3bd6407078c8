"""The label-free default task: quantization error and outliers on real English text that ships with Python.

Text: ``pydoc_data.topics.topics`` (CPython's own help text for the language reference, ~500 kB of English), in
sorted topic order, tokenized as one stream and cut into windows of ``max_length`` tokens ([CLS] ... [SEP]), so no
window has padding and every token counts.  The first ``calibration_windows`` windows are calibration data; the next
``eval_windows`` windows are held out for the metrics.
"""
from __future__ import annotations

import torch

from ..quant.analysis import ErrorAccumulator, OutlierAccumulator, full_precision, record_activations
from .texts import TEXT_SOURCES  # noqa: F401  (re-exported: the task's text sources)


def windows(tokenizer, text: str, max_length: int, n: int) -> torch.Tensor:
    """(n, max_length) token ids: [CLS] + max_length-2 text tokens + [SEP]."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    body = max_length - 2
    if len(ids) < n * body:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than the {n} windows of {body} asked for")
    rows = [[tokenizer.cls_token_id] + ids[i * body:(i + 1) * body] + [tokenizer.sep_token_id] for i in range(n)]
    return torch.tensor(rows, dtype=torch.long)


def split_windows(tokenizer, task) -> tuple[torch.Tensor, torch.Tensor]:
    text = TEXT_SOURCES.get(task.source)()
    w = windows(tokenizer, text, int(task.max_length), int(task.calibration_windows) + int(task.eval_windows))
    return w[: task.calibration_windows], w[task.calibration_windows:]


@torch.no_grad()
def evaluate(model, eval_ids: torch.Tensor, batch_size: int, progress) -> dict:
    """Relative errors versus FP32 (per site and final hidden states) and outlier statistics of ``model``."""
    errors, outliers = ErrorAccumulator(), OutlierAccumulator()
    n_layers = len(model.layers)
    for start in progress(range(0, len(eval_ids), batch_size), desc="evaluation"):
        ids = eval_ids[start:start + batch_size]
        with full_precision(model), record_activations(model) as fp:
            h_fp = model(ids).last_hidden_state
        with record_activations(model) as q:
            h_q = model(ids).last_hidden_state
        errors.add("final_hidden_state", h_q, h_fp)
        for name, x in q.items():
            errors.add(name, x, fp[name])
        for i in range(n_layers):
            for site in (f"encoder.layer.{i}.ffn.residual_sum", f"encoder.layer.{i}.ffn.output",
                         f"encoder.layer.{i}.output"):
                outliers.add(site, q[site])
    rel = errors.result()
    sites = {k: v for k, v in rel.items() if k != "final_hidden_state"}
    worst = max(sites, key=sites.get)
    kurt_sites = [f"encoder.layer.{i}.{s}" for i in range(n_layers) for s in ("ffn.output", "output")]
    return {
        "final_rel_error": rel["final_hidden_state"],
        "mean_site_rel_error": sum(sites.values()) / len(sites),
        "max_site_rel_error": sites[worst],
        "max_site_rel_error_site": worst,
        "max_inf_norm": max(outliers.inf_norm(f"encoder.layer.{i}.ffn.residual_sum") for i in range(n_layers)),
        "avg_kurtosis": sum(outliers.kurtosis(s) for s in kurt_sites) / len(kurt_sites),
        "site_rel_error": sites,
    }
