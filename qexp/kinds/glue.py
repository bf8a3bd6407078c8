"""GLUE classification/regression: fine-tune FP32 (cached), then quantize; QAT trains on the task's training set."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..common import dist
from ..models.families import family_of
from ..models.loading import load_model
from ..quant.sites import configure
from ..tasks.encode import encode, limit, loader, sample
from ..tasks.glue import load_split
from ..tasks.metrics import compute, task_score
from ..train.finetune import META, cache_dir_for, cache_key, finetune, load_cached
from .base import Evaluation, KindError, Loaded, TaskKind, register

log = logging.getLogger("qexp")


def data_source(task) -> str:
    """Where a GLUE task's data comes from (part of the fine-tuning cache key and of the record)."""
    return f"tsv:{task.data_dir}" if task.data_dir else f"hub:{task.hub.path}/{task.hub.name}"


def training_data(task) -> str:
    """What the fine-tuning data *is*, for its cache key: the training file's content hash (issue 14 #1: a file edited
    in place is a new checkpoint; the same file found elsewhere is the same one), or the hub dataset's name."""
    if not task.data_dir:
        return data_source(task)
    from ..common.fingerprint import fingerprint

    path = Path(task.data_dir) / task.tsv.get("train", "train.tsv")
    return f"tsv:{task.tsv.get('train', 'train.tsv')}@{fingerprint(path) or 'missing'}"


def finetune_folder(cfg, model_identity: str) -> Path:
    """The fine-tuning cache folder of (model, task data, seed, hyper-parameters)."""
    key = cache_key(model_identity, cfg.task, training_data(cfg.task), int(cfg.seed))
    return cache_dir_for(Path(cfg.cache_dir), cfg.model.name, key)


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def predict(model, batches, device):
    model.eval()
    logits, labels = [], []
    for batch in batches:
        logits.append(model(**to_device(batch, device)).logits.float().cpu())
        labels.append(batch["labels"])
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


@register
class Glue(TaskKind):
    name = "glue"
    causal = False
    trains = True
    searches = True
    distributed = True   # fine-tuning and QAT data-parallel on the single process's batches; the main process writes

    def lkd_fixed_length(self) -> int:
        return int(self.task.max_length)  # the authors' LKD batches: training inputs padded to max_length

    def _encode(self, ds, pad: bool | None = None):
        pad = bool(self.task.pad_to_max_length) if pad is None else pad
        return encode(ds, self.loaded.tokenizer, int(self.task.max_length), pad)

    def check(self) -> None:
        """Also read every local data file now (train and each evaluation split): a malformed row or a bad label
        fails before the model loads and fine-tunes, naming the file and line (issue 14 #4, #6)."""
        super().check()
        if self.task.data_dir:
            for split in ("train", *(s.name for s in self.task.eval_splits)):
                self._split(split)
            self._check_sizes(len(limit(self._split("train"), self.task.limit.train)))
        self._check_parallel_batches()

    def _check_parallel_batches(self) -> None:
        """Under a multi-process launch every global batch is split evenly (issue 30): refused before loading."""
        from ..train.parallel import ParallelError, check_batch

        try:
            check_batch(int(self.task.finetune.batch_size), "task.finetune.batch_size")
            qat = self.ctx.spec.qat
            if qat is not None:
                check_batch(int(qat["batch_size"]), "recipe.qat.batch_size")
        except ParallelError as e:
            raise KindError(str(e)) from None

    def _check_sizes(self, n_train: int) -> None:
        """Issue 27 #10/#19: a header-only train.tsv failed deep in a sampler without naming the file, and
        ``calibration.batch_size=100000`` grew to 23.7 GB and was OOM-killed.  Refused here, before the model loads."""

        cal = self.ctx.calibration
        where = str(Path(self.task.data_dir) / self.task.tsv.get("train", "train.tsv"))
        if n_train == 0:
            raise KindError(f"{where} has no training example (a header only?); fine-tuning and calibration need some")
        if int(cal.batch_size) > n_train:
            raise KindError(f"calibration.batch_size={int(cal.batch_size)} is larger than the training data "
                            f"({n_train} examples in {where}"
                            f"{', task.limit.train=' + str(self.task.limit.train) if self.task.limit.train else ''}); "
                            f"choose at most {n_train}")
        need = int(cal.batch_size) * int(cal.num_batches)
        if need > n_train:
            log.warning("calibration draws %d sequences (%d x %d) from %d training examples: rows repeat", need,
                        int(cal.batch_size), int(cal.num_batches), n_train)

    def _split(self, name: str):
        """A split of the task's data, read once per run (check() reads and validates them all first)."""
        cache = self.__dict__.setdefault("_splits", {})
        if name not in cache:
            cache[name] = load_split(self.task, name, self.task.data_dir)
        return cache[name]

    def load(self) -> Loaded:
        from transformers import set_seed

        cfg, task, ctx = self.cfg, self.task, self.ctx
        set_seed(ctx.seed)  # the new classification head's init depends on the seed
        with dist.main_first():   # a hub download once; the other ranks read the hub cache
            hf = load_model(cfg.model, num_labels=int(task.num_labels), seed=ctx.seed)
            self.train_raw = limit(self._split("train"), task.limit.train)
        model = family_of(cfg.model).wrap(hf.model)
        configure(model, ctx.quant)  # once, and before any training: bad site rules fail here
        self.loaded = Loaded(model, hf.tokenizer, hf.identity)
        folder = finetune_folder(cfg, hf.identity)
        # every rank takes the main process's decision (another job may be writing that folder right now)
        cached = load_cached(folder) if dist.from_main((folder / META).exists()) else None
        if cached is not None:
            hf.model.load_state_dict(cached[0].state_dict())  # the wrapper borrows hf.model's parameters
            meta = {**cached[1], "cached": True}
            log.info("fine-tuned checkpoint found in cache: %s", folder)
        else:
            with ctx.timer.stage("finetune"):
                train = self._encode(self.train_raw)
                meta = {**finetune(hf.model, hf.tokenizer, train, task, ctx.seed, folder, ctx.device, ctx.progress,
                                   report=ctx.report(folder.name)), "cached": False}
        self.loaded.record["finetune"] = {**meta, "checkpoint": str(folder)}
        model.to(ctx.device).eval()
        return self.loaded

    def calibration_batches(self):
        cal, tok, device = self.ctx.calibration, self.loaded.tokenizer, self.ctx.device
        n = int(cal.batch_size) * int(cal.num_batches)
        data = self._encode(sample(self.train_raw, n, self.stream_seed("calibration")), bool(cal.pad_to_max_length))
        return lambda: (to_device(b, device) for b in loader(data, tok, int(cal.batch_size)))

    def adaround_batches(self, n: int):
        data = self._encode(sample(self.train_raw, n, self.stream_seed("adaround")))
        return lambda: (to_device(b, self.ctx.device) for b in loader(data, self.loaded.tokenizer, 64))

    def lkd_length(self) -> int:
        return int(self.task.max_length)

    def lkd_sampler(self, length: int):
        data = self._encode(self.train_raw, True).with_format("torch")
        table = {c: data[c] for c in ("input_ids", "attention_mask", "token_type_ids") if c in data.column_names}
        device = self.ctx.device
        return lambda n, g: {c: v[torch.randint(len(v), (n,), generator=g)].to(device) for c, v in table.items()}

    def objective_data(self, n: int):
        return self._encode(sample(self.train_raw, min(n, len(self.train_raw)), self.stream_seed("objective")))  # no repeats

    @torch.no_grad()
    def objective(self, model, data) -> dict:
        """Cross-entropy (MSE for a regression task) and the task score (the mean of ``task.score``, x100) on
        training examples."""
        dl = loader(data, self.loaded.tokenizer, int(self.task.finetune.eval_batch_size))
        logits, labels = predict(model, dl, self.ctx.device)
        t_logits, t_labels = torch.from_numpy(logits), torch.from_numpy(labels)
        if self.task.regression:
            loss = torch.nn.functional.mse_loss(t_logits.reshape(-1), t_labels.float())
        else:
            loss = torch.nn.functional.cross_entropy(t_logits, t_labels.long())
        metrics = compute(list(self.task.metrics), logits, labels, bool(self.task.regression))
        return {"loss": float(loss), "metric": task_score({"train": metrics}, list(self.task.score)),
                "metric_name": "+".join(self.task.score), "higher_is_better": True, "n": int(len(labels))}

    def train(self, model) -> dict:
        from ..train import qat

        ctx, cfg = self.ctx, self.cfg
        hp = ctx.spec.qat
        train = self._encode(self.train_raw)
        folder = (Path(cfg.cache_dir) / "qat" /
                  f"{cfg.model.name}__{self.task.name}__{ctx.spec.recipe}__seed{ctx.seed}__{ctx.run_id}")
        with tempfile.TemporaryDirectory(prefix="qexp-qat-") as work:
            meta = qat.train_qat(model, train, self.loaded.tokenizer, hp, ctx.seed, ctx.device, ctx.progress,
                                 Path(work), regression=bool(self.task.regression), report=ctx.report(ctx.run_id))
        if dist.is_main():   # DDP kept weights and ranges equal on every rank; one writes them
            qat.save_qat(model, self.loaded.tokenizer, folder, {**meta, "run_id": ctx.run_id, "quant": ctx.quant})
        dist.barrier()
        return {**meta, "export": str(folder)}

    def evaluate(self, model) -> Evaluation:
        task, metrics = self.task, {}
        for split in task.eval_splits:
            ds = self._encode(limit(self._split(split.name), task.limit.eval))
            dl = loader(ds, self.loaded.tokenizer, int(task.finetune.eval_batch_size))
            logits, labels = predict(model, self.bar(dl, "evaluation"), self.ctx.device)
            if not np.isfinite(logits).all():
                raise FloatingPointError(f"non-finite logits on {task.name}/{split.name}")
            metrics[split.name] = {**compute(list(task.metrics), logits, labels, bool(task.regression)),
                                   "n": int(len(labels))}
        return Evaluation(metrics, task_score(metrics, list(task.score)), data_source(task))
