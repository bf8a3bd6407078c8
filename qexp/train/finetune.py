"""FP32 fine-tuning with the HF Trainer, cached per (model, task data, seed, hyper-parameters).

The checkpoint is trained into a temporary folder and renamed into place when complete, so the cache never holds a
half-written checkpoint; when two jobs race for the same key, the first rename wins and the other's copy is dropped.
Under torchrun / accelerate launch the ranks train data-parallel on the single process's global batches
(:mod:`qexp.train.parallel`) and only the main process writes the checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import transformers
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, TrainingArguments

from ..common import dist
from ..common.tmpdirs import make_tmp
from .parallel import SplitBatchTrainer, data_parallel_args

META = "qexp_finetune.json"


def cache_key(model_identity: str, task, data_source: str, seed: int) -> dict:
    ft = dict(task.finetune)
    ft.pop("eval_batch_size", None)
    return {"model": model_identity, "task": task.name, "task_version": task.version, "data": data_source,
            "limit_train": task.limit.train, "max_length": task.max_length,
            "pad_to_max_length": task.pad_to_max_length, "seed": int(seed), "finetune": ft}


def cache_dir_for(cache_root: Path, model_name: str, key: dict) -> Path:
    h = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path(cache_root) / "finetune" / f"{model_name}__{key['task']}__seed{key['seed']}__{h}"


def load_cached(folder: Path):
    if not (folder / META).exists():
        return None
    model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    with open(folder / META) as f:
        return model, json.load(f)


def finetune(model, tokenizer, train_ds, task, seed: int, folder: Path, device: str, progress: bool,
             report: dict | None = None):
    """Fine-tune ``model`` in place and save it (atomically) to ``folder``; returns the metadata written.  ``report``:
    the Trainer's reporting arguments (:mod:`qexp.train.reporting`; none by default)."""
    ft = task.finetune
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_tmp(folder.parent, folder.name)   # removes the .tmp folders of killed runs first
    try:
        args = TrainingArguments(
            output_dir=str(tmp / "trainer"), learning_rate=float(ft.learning_rate),
            per_device_train_batch_size=int(ft.batch_size), num_train_epochs=float(ft.epochs),
            max_steps=int(ft.max_steps), lr_scheduler_type="linear", warmup_ratio=float(ft.warmup_ratio),
            weight_decay=float(ft.weight_decay), seed=int(seed), data_seed=int(seed), save_strategy="no",
            logging_steps=50, disable_tqdm=not progress, use_cpu=(device == "cpu"), dataloader_num_workers=0,
            **(report or {"report_to": []}),
            **data_parallel_args(int(ft.batch_size), device, "task.finetune.batch_size"))
        trainer = SplitBatchTrainer(model=model, args=args, train_dataset=train_ds,
                                    data_collator=DataCollatorWithPadding(tokenizer), regression=bool(task.regression))
        t0 = time.time()
        out = trainer.train()
        meta = {"train_loss": dist.mean_over_ranks(out.training_loss), "steps": out.global_step, "seconds": time.time() - t0,
                "transformers": transformers.__version__}
        if dist.distributed():
            meta["world_size"] = dist.world_size()
        if dist.is_main():   # every rank holds the same weights (DDP); one writes them
            final = tmp / "model"
            trainer.save_model(str(final))
            tokenizer.save_pretrained(str(final))
            with open(final / META, "w") as f:
                json.dump(meta, f, indent=1)
            try:
                os.rename(final, folder)
            except OSError:  # another job finished first: keep its checkpoint
                pass
        dist.barrier()
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
