"""Quantization-aware training with learnable ranges (Bondarenko et al. 2021, Sec. 4 "QAT"; Esser et al. 2019).

Flow: PTQ calibration gives every static quantizer its initial range -> the ranges become parameters (``learned``)
-> the HF Trainer fine-tunes weights and ranges together through the straight-through estimator (Adam, linear warm-up
over the first 10 % of steps, then linear decay to zero) -> the ranges are fixed again -> evaluation.

Why the HF Trainer: it already does the optimiser, schedule, seeding, batching and progress the paper describes.
The authors' code learns the scale (and the float zero point); qexp learns x_min/x_max.  Under Adam the step size is
set per parameter, so ``range_lr=scale_units`` (default) gives each range the weights' learning rate times the grid
steps it spans: one step then moves the implied scale as far as the authors' would.  No weight decay on ranges.

Export (``save_qat``/``load_qat``): the fine-tuned HF model (``save_pretrained``) plus every quantizer's ranges,
permutations and rounding decisions in ``qexp_ranges.safetensors``; reloading reproduces the evaluation exactly (tested).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DataCollatorWithPadding, TrainerCallback, TrainingArguments

from ..common import dist
from ..common.tmpdirs import make_tmp, replace_dir
from ..quant.sites import quantizers
from .parallel import SplitBatchTrainer, data_parallel_args

RANGES_FILE = "qexp_ranges.safetensors"
META_FILE = "qexp_qat.json"
STATE_KEYS = ("x_min", "x_max", "perm", "rounding")
HPARAMS = ("learning_rate", "batch_size", "epochs", "attn_dropout", "warmup_ratio", "weight_decay", "max_steps",
           "range_lr")
RANGE_LR = ("scale_units", "same")


class QATError(ValueError):
    pass


def hyperparameters(qat_cfg) -> dict:
    """The resolved QAT hyper-parameters, checked."""
    hp = {k: qat_cfg.get(k) for k in HPARAMS}
    missing = [k for k, v in hp.items() if v is None]
    if missing:
        raise QATError(f"QAT hyper-parameter(s) {missing} are not set; set e.g. recipe.qat.{missing[0]}=...")
    if not float(hp["learning_rate"]) > 0:
        raise QATError(f"recipe.qat.learning_rate={hp['learning_rate']!r} must be > 0")
    if int(hp["batch_size"]) < 1:
        raise QATError(f"recipe.qat.batch_size={hp['batch_size']!r} must be >= 1")
    if hp["range_lr"] not in RANGE_LR:
        raise QATError(f"recipe.qat.range_lr={hp['range_lr']!r} is not valid; valid: {', '.join(RANGE_LR)}")
    if not 0.0 <= float(hp["attn_dropout"]) < 1.0:
        raise QATError(f"recipe.qat.attn_dropout={hp['attn_dropout']!r} must be in [0, 1)")
    return hp


def learn_ranges(model: nn.Module) -> list[str]:
    """Turn every calibrated static range into a trainable parameter; returns the names of the learned sites."""
    names = []
    for q in quantizers(model):
        if q.state == "fixed" and q.spec.enabled and not q.spec.granularity.dynamic:
            q.set_state("learned")
            names.append(q.name)
    if not names:
        raise QATError("QAT found no calibrated quantizer with a static range to learn (is the recipe all FP32?)")
    return names


def fix_ranges(model: nn.Module) -> None:
    for q in quantizers(model):
        if q.state == "learned":
            q.set_state("fixed")


def range_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{q.name}.{k}": getattr(q, k).detach().clone().cpu()
            for q in quantizers(model) for k in ("x_min", "x_max") if getattr(q, k) is not None}


def range_change(before: dict, after: dict) -> dict:
    """How far the ranges moved during QAT: the mean and max relative change of (x_max - x_min) per site."""
    rel = []
    for key in before:
        if key.endswith(".x_min"):
            site = key[: -len(".x_min")]
            w0 = (before[f"{site}.x_max"] - before[key]).float()
            w1 = (after[f"{site}.x_max"] - after[key]).float()
            rel.append(((w1 - w0).abs() / w0.abs().clamp(min=1e-12)).mean().item())
    moved = sum(r > 0 for r in rel)
    return {"sites": len(rel), "sites_moved": int(moved),
            "mean_rel_width_change": float(sum(rel) / max(len(rel), 1)), "max_rel_width_change": float(max(rel or [0]))}


def grid_steps(q) -> int:
    """How many grid steps a quantizer's range spans: x_max - x_min = steps * scale (the quantizer's own grid)."""
    return q.grid().steps


def param_groups(model: nn.Module, hp: dict) -> list[dict]:
    """Adam parameter groups: the model's weights, and one group per learned range (no weight decay).  With
    ``range_lr=scale_units`` a range's learning rate is the weights' times its grid steps, so one Adam step moves
    the implied scale by about ``learning_rate``, as when the scale itself is the parameter (the authors' code)."""
    lr, ranges, groups = float(hp["learning_rate"]), set(), []
    for q in quantizers(model):
        if q.state == "learned":
            mult = grid_steps(q) if hp["range_lr"] == "scale_units" else 1
            groups.append({"params": [q.x_min, q.x_max], "lr": lr * mult, "weight_decay": 0.0})
            ranges |= {id(q.x_min), id(q.x_max)}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ranges]
    return [{"params": rest, "lr": lr, "weight_decay": float(hp["weight_decay"])}, *groups]


class _LossLog(TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append((int(state.global_step), float(logs["loss"])))


def train_qat(qmodel: nn.Module, train_ds, tokenizer, hp: dict, seed: int, device: str, progress: bool,
              workdir: Path, regression: bool = False, report: dict | None = None) -> dict:
    """Fine-tune ``qmodel`` (calibrated) with learned ranges; leaves its ranges fixed.  Returns training metadata.
    Under a multi-process launch the ranks split the single process's global batches (:mod:`qexp.train.parallel`);
    the learned ranges are parameters, so DDP keeps them equal on every rank."""
    qmodel.set_attention_dropout(float(hp["attn_dropout"]))
    learned = learn_ranges(qmodel)
    before = range_snapshot(qmodel)
    log_cb = _LossLog()
    steps_per_epoch = -(-len(train_ds) // int(hp["batch_size"]))
    total = int(hp["max_steps"]) if int(hp["max_steps"]) > 0 else steps_per_epoch * int(hp["epochs"])
    args = TrainingArguments(
        output_dir=str(workdir), learning_rate=float(hp["learning_rate"]),
        per_device_train_batch_size=int(hp["batch_size"]), num_train_epochs=float(hp["epochs"]),
        max_steps=int(hp["max_steps"]), lr_scheduler_type="linear", warmup_ratio=float(hp["warmup_ratio"]),
        weight_decay=float(hp["weight_decay"]), optim="adamw_torch", seed=int(seed), data_seed=int(seed),
        save_strategy="no", **(report or {"report_to": []}), logging_steps=max(1, min(50, total // 20)),
        disable_tqdm=not progress,
        use_cpu=(device == "cpu"), dataloader_num_workers=0, remove_unused_columns=True,
        **data_parallel_args(int(hp["batch_size"]), device, "recipe.qat.batch_size"))
    optimizer = torch.optim.AdamW(param_groups(qmodel, hp), lr=float(hp["learning_rate"]))
    trainer = SplitBatchTrainer(model=qmodel, args=args, train_dataset=train_ds,
                                data_collator=DataCollatorWithPadding(tokenizer), callbacks=[log_cb],
                                optimizers=(optimizer, None),   # the Trainer adds its warm-up/decay schedule
                                regression=regression)
    t0 = time.time()
    out = trainer.train()
    fix_ranges(qmodel)
    qmodel.eval()
    losses = log_cb.losses
    return {"train_loss": dist.mean_over_ranks(out.training_loss), "steps": out.global_step, "seconds": round(time.time() - t0, 1),
            "learned_sites": len(learned), "loss_curve": losses,
            "ranges": range_change(before, range_snapshot(qmodel)), "hyperparameters": dict(hp)}


# -- export / reload ---------------------------------------------------------------------------------------------
def quantizer_state(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for q in quantizers(model):
        for k in STATE_KEYS:
            t = getattr(q, k)
            if t is not None:
                out[f"{q.name}::{k}"] = t.detach().contiguous().cpu()
    return out


def load_quantizer_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put exported ranges into a configured model and fix every enabled quantizer."""
    qs = {q.name: q for q in quantizers(model)}
    unknown = sorted({k.split("::")[0] for k in state} - set(qs))
    if unknown:
        raise QATError(f"exported ranges name site(s) this model lacks: {unknown[:5]}")
    device = next(model.parameters()).device
    for q in qs.values():
        for k in STATE_KEYS:
            t = state.get(f"{q.name}::{k}")
            setattr(q, k, None if t is None else t.to(device))
        if q.spec.enabled:
            if q.x_min is None and not q.spec.granularity.dynamic:
                raise QATError(f"exported ranges have no range for enabled site {q.name!r}")
            q.set_state("fixed")
        else:
            q.set_state("off")


def save_qat(qmodel: nn.Module, tokenizer, folder: Path, meta: dict) -> Path:
    """Write the QAT model and its ranges to ``folder`` atomically (temporary folder, then rename)."""
    folder = Path(folder)
    tmp = make_tmp(folder.parent, folder.name)
    try:
        qmodel.hf[0].save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        save_file(quantizer_state(qmodel), str(tmp / RANGES_FILE))
        with open(tmp / META_FILE, "w") as f:
            json.dump(meta, f, indent=1, default=str)
        replace_dir(tmp, folder)   # two identical QAT runs cannot fail on each other's export
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_qat(folder: Path, quant_cfg) -> nn.Module:
    """The encoder wrapper (family ``bert``: QAT trains GLUE classifiers) with the exported weights and ranges,
    configured by ``quant_cfg`` and ready to evaluate."""
    from transformers import AutoModelForSequenceClassification

    from ..models.families import quantizable
    from ..quant.sites import configure

    folder = Path(folder)
    if not (folder / RANGES_FILE).exists():
        raise FileNotFoundError(f"{folder} holds no {RANGES_FILE}: not a qexp QAT export")
    qmodel = quantizable(AutoModelForSequenceClassification.from_pretrained(str(folder)), "bert").eval()
    configure(qmodel, quant_cfg)
    load_quantizer_state(qmodel, load_file(str(folder / RANGES_FILE)))
    return qmodel
