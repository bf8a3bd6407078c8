"""Pre-training from scratch with the HF Trainer: checkpoints, resume, and evaluation curves (Bondarenko et al. 2023).

The run trains in ``<cache>/pretrain/.partial-<name>/`` (Trainer checkpoints every ``save_steps``); repeating the
same command after a kill resumes from the last checkpoint (weights, AdamW state, LR schedule, RNG states and the
position in the data order; the Trainer restores them).  When training ends the final weights are written and the
folder is renamed to ``<name>``: the cache never holds a half-trained model, and the cache key covers everything that
changes the weights (model and attention variant, data content, tokenizer, objective, hyper-parameters, seed).

Optimizer: AdamW with the authors' weight-decay exclusions (biases and LayerNorm weights; ``wd_ln_gamma: true``
decays the LayerNorm weights too, OPT's ``--wd_LN_gamma``), linear warm-up and decay, gradient clipping.  At every
``eval_steps`` (and at step 0) the model is evaluated on fixed validation batches
(:func:`qexp.tasks.pretraining.evaluate`): loss, perplexity, max inf-norm and kurtosis land in the Trainer's
``log_history`` (kept in each checkpoint, so the curves survive a resume) and in the record.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from torch import nn

META = "qexp_pretrain.json"
SCHEDULES = ("linear", "cosine")   # warm-up, then linear decay to 0 (Bondarenko et al.) or a half cosine (nanoGPT)
CURVE_KEYS = ("loss", "perplexity", "max_inf_norm", "max_inf_norm_all", "avg_kurtosis", "max_kurtosis")


class PretrainConfigError(ValueError):
    pass


def check_hyperparameters(tr) -> None:
    """Refuse bad training settings before any data or model is built."""
    positive_int = ("max_steps", "batch_size", "grad_accum", "eval_steps", "save_steps", "eval_batches")
    for key in positive_int:
        v = tr.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise PretrainConfigError(f"task.train.{key}={v!r} must be a positive integer")
    if not isinstance(tr.get("warmup_steps"), int) or tr.warmup_steps < 0:
        raise PretrainConfigError(f"task.train.warmup_steps={tr.get('warmup_steps')!r} must be an integer >= 0")
    for key in ("learning_rate", "max_grad_norm"):
        if not float(tr.get(key)) > 0:
            raise PretrainConfigError(f"task.train.{key}={tr.get(key)!r} must be > 0")
    if not float(tr.weight_decay) >= 0:
        raise PretrainConfigError(f"task.train.weight_decay={tr.weight_decay!r} must be >= 0")
    b1, b2 = (float(b) for b in tr.betas)
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise PretrainConfigError(f"task.train.betas={list(tr.betas)} must lie in [0, 1)")
    if str(tr.get("lr_scheduler", "linear")) not in SCHEDULES:
        raise PretrainConfigError(f"task.train.lr_scheduler={tr.get('lr_scheduler')!r}; valid: {', '.join(SCHEDULES)}")
    if str(tr.get("precision", "fp32")) not in ("fp32", "fp16", "bf16"):
        raise PretrainConfigError(f"task.train.precision={tr.get('precision')!r}; valid: fp32, fp16, bf16")


log = logging.getLogger("qexp")


LOOK_KEYS = ("eval_steps", "eval_batches", "save_steps", "save_total_limit", "logging_steps")


def cache_key(model_cfg, task, data_source: str, tokenizer: dict, seq_length: int, seed: int) -> dict:
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(model_cfg, resolve=True)
    model.pop("name", None)
    tr = OmegaConf.to_container(task.train, resolve=True)
    for k in LOOK_KEYS:
        tr.pop(k, None)  # how often to look or save does not change the weights
    return {"model": model, "objective": str(task.objective), "mlm_probability": float(task.mlm_probability),
            "data": data_source, "tokenizer": tokenizer, "seq_length": int(seq_length), "train": tr,
            "seed": int(seed)}


def folder_for(cache_root: Path, model_name: str, task_name: str, key: dict) -> Path:
    h = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(cache_root) / "pretrain" / f"{model_name}__{task_name}__seed{key['seed']}__{h}"


def read_meta(folder: Path) -> dict | None:
    path = folder / META
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def param_groups(hf: nn.Module, weight_decay: float, wd_ln_gamma: bool) -> list[dict]:
    """AdamW groups: no decay on biases and (unless ``wd_ln_gamma``) LayerNorm weights; shared tensors once."""
    norms = {id(m.weight) for m in hf.modules() if isinstance(m, nn.LayerNorm) and m.weight is not None}
    decay, no_decay, seen = [], [], set()
    for name, p in hf.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        excluded = name.endswith("bias") or (id(p) in norms and not wd_ln_gamma)
        (no_decay if excluded else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _trainer_class():
    from transformers import Trainer, TrainerCallback

    class StopWhenDiverged(TrainerCallback):
        """Ends training at the end of the step whose loss was not finite (no save, no evaluation of NaN weights)."""

        def __init__(self, trainer):
            self.trainer = trainer

        def on_step_end(self, args, state, control, **kw):
            if self.trainer.diverged is not None:
                control.should_training_stop = True
                control.should_save = control.should_evaluate = False
            return control

    class PretrainTrainer(Trainer):
        """The HF Trainer with the authors' AdamW groups (or ``make_optimizer``'s optimizer over them), an evaluation
        that computes the outlier metrics, and divergence detection: a non-finite training loss stops training and is
        recorded (``self.diverged``: step and reason) instead of training on NaNs."""

        def __init__(self, *a, groups, evaluate_fn, make_optimizer=None, penalty=None, **kw):
            self._groups, self._evaluate_fn, self._penalty = groups, evaluate_fn, penalty
            self.penalty_terms: list[float] = []
            self._make_optimizer = make_optimizer or torch.optim.AdamW
            self.diverged = None
            super().__init__(*a, **kw)
            self.add_callback(StopWhenDiverged(self))

        def create_optimizer(self):
            if self.optimizer is None:
                a = self.args
                self.optimizer = self._make_optimizer(self._groups, lr=a.learning_rate,
                                                      betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_epsilon)
            return self.optimizer

        def compute_loss(self, model, inputs, return_outputs=False, **kw):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kw)
            term = self._penalty.take() if self._penalty is not None else None
            if term is None:
                return out
            self.penalty_terms.append(float(term.detach()))
            return (out[0] + term, out[1]) if return_outputs else out + term

        def training_step(self, model, inputs, *args, **kw):
            loss = super().training_step(model, inputs, *args, **kw)
            if self.diverged is None and not torch.isfinite(loss).all():
                self.diverged = {"step": self.state.global_step + 1,
                                 "reason": f"non-finite training loss ({float(loss.detach().float().mean())})"}
            return loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            m = self._evaluate_fn(self.model)
            logs = {f"{metric_key_prefix}_{k}": float(m[k]) for k in CURVE_KEYS if k in m}
            self.log(logs)
            return logs

    return PretrainTrainer


def complete(checkpoint: Path) -> bool:
    """Whether a Trainer checkpoint folder was written to the end: its ``trainer_state.json`` (written last) parses and
    every ``.pt``/``.pth``/``.bin`` file in it is a whole archive (``torch.save`` writes zip files; a killed save
    leaves a truncated one)."""
    import zipfile

    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        for f in checkpoint.iterdir():
            if f.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(f) as z:
                    if z.testzip() is not None:
                        return False
    except (OSError, ValueError, zipfile.BadZipFile):
        return False
    return True


def last_checkpoint(trainer_dir: Path) -> str | None:
    """The newest *complete* checkpoint to resume from (issue 27 #12: a kill during a save left ``checkpoint-60``
    without ``trainer_state.json`` and every rerun failed on it).  Incomplete ones are moved aside to
    ``.incomplete-checkpoint-N`` (kept for inspection, ignored by the Trainer's rotation) with a warning."""
    if not trainer_dir.is_dir():
        return None
    found = sorted((p for p in trainer_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ck in found:
        if complete(ck):
            return str(ck)
        aside = ck.with_name(f".incomplete-{ck.name}")
        shutil.rmtree(aside, ignore_errors=True)
        ck.rename(aside)
        log.warning("checkpoint %s was not written to the end (killed during a save?); moved it to %s and resuming "
                    "from the newest complete one", ck, aside)
    return None


def mean_train_loss(history: list[dict], out, resume: str | None) -> tuple[float | None, int]:
    """The mean training loss over every step of the run, resumed or not (issue 27 #4: the Trainer's
    ``training_loss`` divides the losses of *this* process's steps by all steps, so a resumed run reported 3.34
    instead of 6.96).  Built from the logged windows (each a mean over the steps since the previous log; the log history
    is restored with the checkpoint) plus this process's tail after its last log, recovered from the Trainer's total.
    Returns (mean, steps it covers): steps between the last log and a checkpoint a killed run never logged are not
    covered (none when ``save_steps`` is a multiple of ``logging_steps``)."""
    start = int(Path(resume).name.split("-")[-1]) if resume else 0
    logged = sorted({h["step"]: h["loss"] for h in history if "loss" in h and "eval_loss" not in h}.items())
    total, steps, prev, this_run = 0.0, 0, 0, 0.0
    for step, loss in logged:
        window = step - max(prev, start) if prev < start < step else step - prev
        total, steps, prev = total + loss * window, steps + window, step
        if step > start:
            this_run += loss * window
    tail = out.global_step - max(prev, start)
    if tail > 0 and out.training_loss is not None:   # the Trainer's total covers this process's steps exactly
        total += max(out.training_loss * out.global_step - this_run, 0.0)
        steps += tail
    return (total / steps if steps else None), steps


def pretrain(wrapper: nn.Module, hf: nn.Module, train_ds, collate, evaluate_fn, tr, seed: int, folder: Path,
             device: str, progress: bool, save_fn, make_optimizer=None, extra_meta: dict | None = None,
             penalty=None, report: dict | None = None) -> dict:
    """Train ``wrapper`` (whose parameters are ``hf``'s, plus the gates) and save it with ``save_fn(folder)``;
    resumes from ``.partial-<name>`` when an earlier run of the same key was interrupted.  ``penalty`` (an object
    whose ``take()`` returns a loss term or None after each forward: the FFN activation regularization) is added to
    the training loss.  Returns the metadata (``diverged``: None, or the step and reason training stopped at)."""
    import transformers
    from transformers import TrainingArguments

    from ..common import dist
    from .parallel import data_parallel_args

    partial = folder.with_name(f".partial-{folder.name}")
    trainer_dir = partial / "trainer"
    with dist.main_first():   # the main process moves a half-written checkpoint aside; the others then agree
        resume = last_checkpoint(trainer_dir)
    precision = str(tr.get("precision", "fp32"))
    # issue 30: the same global batches in the same order as one process (full blocks only: drop_last below)
    multi = data_parallel_args(int(tr.batch_size), device, "task.train.batch_size")
    args = TrainingArguments(
        output_dir=str(trainer_dir), max_steps=int(tr.max_steps), per_device_train_batch_size=int(tr.batch_size),
        gradient_accumulation_steps=int(tr.grad_accum), learning_rate=float(tr.learning_rate),
        adam_beta1=float(tr.betas[0]), adam_beta2=float(tr.betas[1]), adam_epsilon=float(tr.get("eps", 1e-8)),
        weight_decay=float(tr.weight_decay), lr_scheduler_type=str(tr.get("lr_scheduler", "linear")), warmup_steps=int(tr.warmup_steps),
        max_grad_norm=float(tr.max_grad_norm), seed=int(seed), data_seed=int(seed),
        save_strategy="steps", save_steps=int(tr.save_steps), save_total_limit=int(tr.get("save_total_limit", 2)),
        save_safetensors=False,  # the wrapper shares tensors with the HF model (safetensors refuses shared storage)
        eval_strategy="steps", eval_steps=int(tr.eval_steps), eval_on_start=resume is None,
        logging_steps=int(tr.get("logging_steps", 50)), **(report or {"report_to": []}), disable_tqdm=not progress,
        use_cpu=(device == "cpu"), dataloader_num_workers=0, dataloader_drop_last=True,
        remove_unused_columns=False, fp16=precision == "fp16", bf16=precision == "bf16", **multi)
    trainer = _trainer_class()(model=wrapper, args=args, train_dataset=train_ds, eval_dataset=train_ds,
                               data_collator=collate,
                               groups=param_groups(hf, float(tr.weight_decay), bool(tr.get("wd_ln_gamma", False))),
                               evaluate_fn=evaluate_fn, make_optimizer=make_optimizer, penalty=penalty)
    t0 = time.time()
    out = trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0
    history = trainer.state.log_history
    curves, seen = [], set()
    for h in history:
        if "eval_loss" in h and h["step"] not in seen:
            seen.add(h["step"])
            curves.append({"step": h["step"], **{k: h[f"eval_{k}"] for k in CURVE_KEYS if f"eval_{k}" in h}})
    train_losses = [{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate")}
                    for h in history if "loss" in h and "eval_loss" not in h]
    tokens_per_step = int(tr.batch_size) * int(tr.grad_accum) * len(train_ds[0]["input_ids"])
    steps_this_run = out.global_step - (int(Path(resume).name.split("-")[-1]) if resume else 0)
    diverged = trainer.diverged
    if diverged is None and not all(torch.isfinite(p).all() for p in hf.parameters()):
        diverged = {"step": out.global_step, "reason": "non-finite weights after training"}
    loss_mean, loss_steps = mean_train_loss(history, out, resume)
    meta = {"steps": out.global_step, "diverged": diverged, **(extra_meta or {}), "train_loss_mean": loss_mean,
            "train_loss_mean_steps": loss_steps, "seconds_this_run": seconds,
            "resumed_from": Path(resume).name if resume else None, "steps_this_run": steps_this_run,
            "tokens_per_second": tokens_per_step * steps_this_run / seconds if seconds > 0 else None,
            "curves": curves, "train_loss": train_losses, "transformers": transformers.__version__}
    meta["world_size"] = dist.world_size()
    if penalty is not None and trainer.penalty_terms:   # this process's steps (a resumed run: since the resume)
        terms = trainer.penalty_terms
        meta["penalty"] = {"mean_this_run": sum(terms) / len(terms), "last": terms[-1], "forwards": len(terms)}
    if dist.is_main():   # only the main process writes the model; the others wait and read it
        final = partial / "model"
        save_fn(final)
        with open(final / META, "w") as f:
            json.dump(meta, f, indent=1)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(final, folder)
        except OSError:  # another job finished first: keep its model
            pass
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    return meta
