"""Outlier diagnostics: Bondarenko et al. 2021, Figure 2, for any model, task and layer.

For each encoder layer, on the full-precision model:
- per-token ranges (min and max over the hidden dimension) of the FFN input (attention LayerNorm output) and the FFN
  output, for the first sequence (Figure 2a);
- the map of values beyond six standard deviations from the tensor's mean, token x embedding dimension, over the
  first ``sequences`` sequences (Figure 2b; mean and std of the whole tensor of those sequences);
- a table of the embedding dimensions that hold most of those outliers (``outlier_dims.csv``).

Data: a GLUE task's dev split (the paper: the first sequence / the first ten sequences of MNLI dev), or the label-free
task's held-out windows.  Model: for a GLUE task, the fine-tuned checkpoint of (model, task, seed) when the cache holds
one (what the paper analyses), else the pre-trained encoder (said in the summary).  Padding is never counted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..quant.analysis import record_activations

SIGMAS = 6.0
TENSORS = {"ffn.input": "FFN input", "ffn.output": "FFN output"}


@dataclass
class LayerActivations:
    layer: int
    tensors: dict[str, list[np.ndarray]]  # "ffn.input"/"ffn.output" -> one (tokens, hidden) array per sequence


@torch.no_grad()
def collect(model, sequences: list[dict], layers: list[int]) -> list[LayerActivations]:
    """FFN input and output of ``layers`` for each sequence (dict of model inputs, batch of one, no padding)."""
    out = {i: {k: [] for k in TENSORS} for i in layers}
    model.eval()
    for seq in sequences:
        with record_activations(model) as acts:
            model(**seq)
        for i in layers:
            for k in TENSORS:
                out[i][k].append(acts[f"encoder.layer.{i}.{k}"][0].double().cpu().numpy())
    return [LayerActivations(i, out[i]) for i in layers]


def outlier_mask(x: np.ndarray, sigmas: float = SIGMAS) -> np.ndarray:
    """|x - mean| > sigmas * std, with mean and (population) std of the whole array."""
    return np.abs(x - x.mean()) > sigmas * x.std()


def outlier_dims(acts: list[LayerActivations], top: int, sigmas: float = SIGMAS) -> pd.DataFrame:
    """Per layer and tensor, the ``top`` embedding dimensions by number of outlier values (ties: larger max |x|)."""
    rows = []
    for la in acts:
        for key, seqs in la.tensors.items():
            x = np.concatenate(seqs, axis=0)  # (all tokens, hidden)
            mask = outlier_mask(x, sigmas)
            count = mask.sum(axis=0)
            peak = np.abs(x).max(axis=0)
            order = sorted(range(x.shape[1]), key=lambda d: (-count[d], -peak[d]))[:top]
            for rank, d in enumerate(order, 1):
                rows.append({"layer": la.layer, "tensor": key, "rank": rank, "dim": d, "outliers": int(count[d]),
                             "token_fraction": float(count[d] / x.shape[0]), "max_abs": float(peak[d]),
                             "tensor_std": float(x.std()), "tokens": int(x.shape[0]),
                             "tensor_outliers": int(mask.sum())})
    return pd.DataFrame(rows, columns=["layer", "tensor", "rank", "dim", "outliers", "token_fraction", "max_abs",
                                       "tensor_std", "tokens", "tensor_outliers"])


def plot_ranges(la: LayerActivations, tokens: list[str], path: Path) -> None:
    """Figure 2a: per-token min and max of the FFN input (top) and output (bottom) for the first sequence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.18 * len(tokens)), 5.5), sharex=True)
    for ax, (key, title) in zip(axes, TENSORS.items()):
        x = la.tensors[key][0]
        pos = np.arange(x.shape[0])
        ax.vlines(pos, x.min(axis=1), x.max(axis=1), color="tab:blue", lw=2)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylabel("range")
        ax.set_title(f"layer {la.layer}: {title} (per-token min..max)", fontsize=9)
    if len(tokens) <= 160:
        axes[-1].set_xticks(np.arange(len(tokens)))
        axes[-1].set_xticklabels(tokens, rotation=90, fontsize=5)
    axes[-1].set_xlabel("token")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_outliers(la: LayerActivations, path: Path, sigmas: float = SIGMAS) -> None:
    """Figure 2b: token x embedding dimension, dark where the value is beyond ``sigmas`` std from the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 6))
    for ax, (key, title) in zip(axes, TENSORS.items()):
        x = np.concatenate(la.tensors[key], axis=0)
        ax.imshow(outlier_mask(x, sigmas), aspect="auto", cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(f"layer {la.layer}: {title}, |x - mean| > {sigmas:g} std "
                     f"({len(la.tensors[key])} sequences)", fontsize=9)
        ax.set_ylabel("token (sequences stacked)")
    axes[-1].set_xlabel("embedding dimension")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(acts: list[LayerActivations], tokens: list[str], out: Path, top: int, meta: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for la in acts:
        for name, plot, args in ((f"ffn_ranges_layer{la.layer}.png", plot_ranges, (la, tokens)),
                                 (f"ffn_outliers_layer{la.layer}.png", plot_outliers, (la,))):
            tmp = out / f".tmp-{name}"
            plot(*args, tmp)
            tmp.replace(out / name)  # a crash leaves no half-written figure under the final name
            files.append(name)
    dims = outlier_dims(acts, top)
    tmp = out / ".tmp-outlier_dims.csv"
    dims.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(out / "outlier_dims.csv")
    files.append("outlier_dims.csv")
    (out / "analysis.json").write_text(json.dumps({**meta, "files": files}, indent=1, default=str))
    return {"files": files, "dims": dims}


def summary(dims: pd.DataFrame) -> str:
    lines = []
    for (layer, key), g in dims.groupby(["layer", "tensor"], sort=True):
        g = g[g.outliers > 0]
        tops = ", ".join(f"{int(r.dim)} ({int(r.outliers)}, max |x| {r.max_abs:.1f})" for r in g.itertuples())
        lines.append(f"layer {layer:2d} {TENSORS[key]:10s}: {tops or 'no values beyond 6 std'}")
    return "\n".join(lines)


def analyze(cfg, layers: list[int] | None, sequences: int, top: int, out: Path) -> dict:
    """The ``qexp analyze outliers`` command on a composed config."""
    from ..config.paths import absolute_paths
    from ..kinds.glue import finetune_folder
    from ..models.families import family_of
    from ..models.loading import load_model
    from ..tasks.encode import encode, limit
    from ..tasks.glue import load_split
    from ..tasks.text_outliers import split_windows
    from ..train.finetune import load_cached

    absolute_paths(cfg, Path.cwd())  # as `qexp run` does, so the fine-tuning cache key matches
    task, family = cfg.task, family_of(cfg.model)
    if family.causal or task.kind not in ("glue", "label_free"):
        raise ValueError(f"analyze outliers maps the FFN sites of an encoder on a GLUE or label-free task; got model "
                         f"{cfg.model.name!r} (family {family.name!r}) on task {task.name!r} ({task.kind}); valid "
                         f"families: bert; valid task kinds: glue, label_free")
    glue = task.kind == "glue"
    loaded = load_model(cfg.model, num_labels=int(task.num_labels) if glue else None, seed=int(cfg.seed))
    tok = loaded.tokenizer
    weights = "pre-trained"
    if glue:
        folder = finetune_folder(cfg, loaded.identity)
        cached = load_cached(folder)
        model = cached[0] if cached is not None else loaded.model
        weights = f"fine-tuned ({folder})" if cached is not None else "pre-trained (no fine-tuned checkpoint cached)"
        split = task.eval_splits[0].name
        ds = encode(limit(load_split(task, split, task.data_dir), sequences), tok, int(task.max_length), False)
        seqs = [{"input_ids": torch.tensor([r["input_ids"]]),
                 **({"token_type_ids": torch.tensor([r["token_type_ids"]])} if "token_type_ids" in r else {})}
                for r in ds]
        data = f"{task.name} {split}, first {len(seqs)} sequences"
    else:
        model = loaded.model
        _, eval_ids = split_windows(tok, task)
        seqs = [{"input_ids": eval_ids[i:i + 1]} for i in range(min(sequences, len(eval_ids)))]
        data = f"{task.name} held-out windows, first {len(seqs)}"
    qmodel = family.wrap(model).eval()
    n_layers = len(qmodel.layers)
    layers = list(range(n_layers)) if layers is None else layers
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} do not exist; {cfg.model.name} has layers 0..{n_layers - 1}")
    acts = collect(qmodel, seqs, layers)
    tokens = tok.convert_ids_to_tokens(seqs[0]["input_ids"][0].tolist())
    meta = {"model": cfg.model.name, "task": task.name, "weights": weights, "data": data, "layers": layers,
            "sigmas": SIGMAS, "top": top}
    rep = write_report(acts, tokens, out, top, meta)
    return {**meta, **rep}
