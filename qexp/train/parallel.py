"""Data-parallel training through the HF Trainer that is the same experiment as one process (issue 30).

Under torchrun / accelerate launch / SLURM every global batch of the single-process sampler is split across the ranks
(Accelerate's ``split_batches``) and DDP averages the gradients of the equal shares.  What Accelerate does not make
equal, and this module does:

- **the last, partial batch of an epoch** (GLUE fine-tuning and QAT keep it, as one process does): Accelerate
  completes it to a full batch with examples from the epoch's first batch (``even_batches``), which one process never
  sees.  :class:`SplitBatchTrainer` gives those padding rows weight 0 and scales each rank's loss so that DDP's average
  is the mean over the real rows of the global batch -- the single process's loss;
- **the Trainer's loss-kwargs rescaling**: a model whose ``forward`` takes ``**kwargs`` makes the Trainer multiply the
  loss by the number of processes (for token-count-normalised losses); a classifier's loss is a plain mean, so the
  trainer here computes it itself and switches that rescaling off.

One process: nothing changes (the plain Trainer path), so no single-process record moves.  Written here rather than
taken from a library because neither the Trainer nor Accelerate weights the padded last batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import Trainer

from ..common import dist


class ParallelError(ValueError):
    pass


def data_parallel_args(batch_size: int, device: str, key: str) -> dict:
    """The ``TrainingArguments`` entries of a multi-process launch ({} for one process); ``batch_size`` is the global
    batch (the single process's), ``key`` names it in the error when it does not split evenly."""
    if not dist.distributed():
        return {}
    check_batch(batch_size, key)
    return {"accelerator_config": {"split_batches": True}, "ddp_backend": "gloo" if device == "cpu" else "nccl"}


def check_batch(batch_size: int, key: str) -> None:
    if dist.distributed() and int(batch_size) % dist.world_size():
        raise ParallelError(f"{key}={int(batch_size)} must be a multiple of the {dist.world_size()} processes (each "
                            f"takes an equal share of every global batch)")


def last_batch_rows(n_examples: int, batch_size: int, world: int, rank: int) -> tuple[int, int]:
    """(real rows of this rank's share of the epoch's last batch, real rows of that global batch); (share, batch)
    when the epoch has no partial batch.  The real rows come first in the completed batch, then the padding."""
    share = batch_size // world
    rest = n_examples % batch_size
    if rest == 0:
        return share, batch_size
    return max(0, min(share, rest - rank * share)), rest


class SplitBatchTrainer(Trainer):
    """A Trainer for sequence classifiers (GLUE fine-tuning, QAT) whose multi-process loss equals one process's on
    every batch, including the epoch's partial last one (see the module's text).  ``regression``: MSE on one output
    (``num_labels == 1``), else cross-entropy -- the HF classifiers' own choice."""

    def __init__(self, *args, regression: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.regression = regression
        if dist.distributed():
            if self.args.gradient_accumulation_steps != 1:   # the last-batch test below counts batches as steps
                raise ParallelError("a split-batch classifier trainer runs with gradient_accumulation_steps=1")
            self.model_accepts_loss_kwargs = False   # a mean loss: no rescaling by the number of processes

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not dist.distributed():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if self.regression:
            per_row = F.mse_loss(logits.reshape(-1).float(), labels.reshape(-1).float(), reduction="none")
        else:
            per_row = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none")
        n, batch = len(self.train_dataset), int(self.args.per_device_train_batch_size)
        per_epoch = math.ceil(n / batch)
        world = dist.world_size()
        if n % batch and self.state.global_step % per_epoch == per_epoch - 1:   # the epoch's completed last batch
            real, total = last_batch_rows(n, batch, world, dist.rank())
            loss = per_row[:real].sum() * world / total   # DDP's mean over ranks: the mean over the real rows
        else:
            loss = per_row.mean()
        return (loss, outputs) if return_outputs else loss
