"""Layer-by-layer knowledge distillation (LKD; ZeroQuant, Yao et al. 2022, Sec. 4.3).

For each transformer block ``k`` in turn, the quantized student block gets the *teacher's* input to that block
(``H_{k-1}`` from the unquantized model) and is trained to reproduce the teacher block's output::

    L_k = MSE( L_k(H_{k-1}), L^_k(H_{k-1}) )        (L1 as an option, Table G.12)

No labels are needed: any token batches serve (task data, other text, random tokens; Table I.3).  As in the authors'
example (``run_glue_lkd.py``, ../shared/research/zeroquant-lkd-and-int8-gemm.md 1.5): a fresh AdamW per block over all
of the block's parameters (weight decay 0.01 except biases and norm gains), constant learning rate 5e-6, no clipping,
plain STE through the quantizers, and weight ranges recomputed from the updated weights before every step.

Under torchrun / accelerate launch every rank draws the same global batch from the same stream and trains on its
equal share of the rows; the block is wrapped in DDP (its gradient all-reduce), so each step is the single
process's step (the MSE/L1 means of equal shares average to the batch's mean).

The block boundary is found with forward hooks, so one implementation serves the BERT wrapper and every HF decoder:
the teacher runs until block ``k`` has produced its output (then stops), and the student block is called with exactly
the positional and keyword arguments the teacher block received (masks, rotary embeddings, ...).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.sites import quantizers

LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}
SOURCES = ("task", "random", "text")


class LKDError(ValueError):
    pass


@dataclass(frozen=True)
class LKDConfig:
    steps: int = 100               # iterations per block (BERT-base 100, BERT-large 400, GPT 1600)
    batch_size: int = 32
    seq_length: int | None = None  # tokens per sequence; None = the task's (BERT 128, GPT 2048)
    lr: float = 5e-6
    weight_decay: float = 0.01
    loss: str = "mse"              # mse | l1
    data: str = "task"             # task (the task's training/calibration text) | random (tokens) | text (a file)
    text_file: str | None = None   # data=text: a UTF-8 text file
    eval_batches: int = 2          # held-out batches on which every block's loss is reported before/after

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise LKDError(f"unknown LKD loss {self.loss!r}; valid: {sorted(LOSSES)}")
        if self.data not in SOURCES:
            raise LKDError(f"unknown LKD data source {self.data!r}; valid: {', '.join(SOURCES)}")
        if self.data == "text" and not self.text_file:
            raise LKDError("lkd.data=text needs lkd.text_file=PATH (a UTF-8 text file)")
        for k in ("steps", "batch_size"):
            if int(getattr(self, k)) < 1:
                raise LKDError(f"lkd.{k} must be a positive integer, got {getattr(self, k)!r}")
        if not self.lr > 0:
            raise LKDError(f"lkd.lr must be positive, got {self.lr!r}")

    @classmethod
    def from_config(cls, cfg) -> "LKDConfig":
        cfg = {k: v for k, v in dict(cfg).items() if k != "enabled"}
        valid = set(cls.__dataclass_fields__)
        unknown = set(cfg) - valid
        if unknown:
            raise LKDError(f"unknown LKD option(s) {sorted(unknown)}; valid: {sorted(valid)}")
        return cls(**cfg)


class _Stop(Exception):
    pass


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def block_io(teacher: nn.Module, block: nn.Module, batch: dict):
    """(args, kwargs, output) of ``block`` when ``teacher`` runs on ``batch``; the forward stops after the block."""
    seen = {}

    def pre(_, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs

    def post(_, args, kwargs, out):
        seen["out"] = _first(out)
        raise _Stop

    h1 = block.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = block.register_forward_hook(post, with_kwargs=True)
    try:
        teacher(**batch)
    except _Stop:
        pass
    finally:
        h1.remove()
        h2.remove()
    if "out" not in seen:
        raise LKDError("the teacher's forward never reached the block (is it part of the model?)")
    return seen["args"], seen["kwargs"], seen["out"]


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen full-precision copy: every quantizer off, no gradients."""
    teacher = copy.deepcopy(student)
    for q in quantizers(teacher):
        q.set_state("off")
    teacher.eval().requires_grad_(False)
    return teacher


def _param_groups(block: nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in block.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in block.parameters() if p.requires_grad and p.ndim < 2]  # biases, norm gains
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def refresh_weight_ranges(block: nn.Module) -> None:
    """Weight ranges from the current weights (the authors recompute the scales in every forward)."""
    for m in block.modules():
        q, inner = getattr(m, "weight_quantizer", None), getattr(m, "inner", None)
        if q is not None and inner is not None and q.spec.enabled and not q.spec.granularity.dynamic:
            q.estimator.observe(q.slots(inner.weight.detach()))
            q.compute_encodings()


def share(batch: dict) -> dict:
    """This rank's rows of a global batch (the whole batch under one process); the batch divides evenly (checked
    before loading: :func:`check_batch`)."""
    from ..common import dist

    if not dist.distributed():
        return batch
    world, rank = dist.world_size(), dist.rank()
    per = len(next(iter(batch.values()))) // world
    return {k: v[rank * per:(rank + 1) * per] for k, v in batch.items()}


def check_batch(batch_size: int) -> None:
    from ..common import dist

    if dist.distributed() and int(batch_size) % dist.world_size():
        raise LKDError(f"recipe.lkd.batch_size={int(batch_size)} must be a multiple of the {dist.world_size()} "
                       f"processes (each distils on an equal share of every batch)")


def _data_parallel(block: nn.Module) -> nn.Module:
    from ..common import dist

    if not dist.distributed():
        return block
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(block)   # its gradient all-reduce; the block itself stays the one refreshed


def _loss_on(teacher, t_block, s_block, batches, loss_fn) -> float:
    total = 0.0
    with torch.no_grad():
        for b in batches:
            args, kwargs, target = block_io(teacher, t_block, b)
            total += loss_fn(_first(s_block(*args, **kwargs)).float(), target.float()).item()
    return total / max(len(batches), 1)


def apply_lkd(student: nn.Module, student_blocks, batches: Callable[[], Iterator[dict]], eval_batches: list[dict],
              cfg: LKDConfig, seed: int = 0, progress: bool = True, teacher: nn.Module | None = None) -> list[dict]:
    """Distil every block of ``student`` (in place) from a full-precision teacher.  ``student_blocks`` lists the
    student's blocks in order; ``batches()`` yields model-input dicts without end (at least ``cfg.steps`` per block).
    Returns, per block, the loss to the teacher on ``eval_batches`` before and after, and the mean training loss of
    the first and last steps."""
    from tqdm.auto import tqdm

    from ..common import dist

    check_batch(cfg.batch_size)
    teacher = teacher if teacher is not None else make_teacher(student)
    s_index = {id(m): n for n, m in student.named_modules()}
    t_modules = dict(teacher.named_modules())
    loss_fn = LOSSES[cfg.loss]
    torch.manual_seed(seed)
    # dynamic (token-wise) activation quantizers are on during LKD, as in the authors' code; static ones are calibrated
    # after LKD, on the distilled weights
    dynamic = [q for q in quantizers(student, "activation") if q.spec.enabled and q.spec.granularity.dynamic]
    saved = [(q, q.state) for q in dynamic]
    for q in dynamic:
        q.set_state("fixed")
    was_training = student.training
    report = []
    stream = batches()
    try:
        for k, s_block in enumerate(student_blocks):
            t_block = t_modules[s_index[id(s_block)]]
            s_block.train(False)  # dropout off (the authors run both models in eval mode)
            before = _loss_on(teacher, t_block, s_block, eval_batches, loss_fn)
            opt = torch.optim.AdamW(_param_groups(s_block, cfg.weight_decay), lr=cfg.lr, eps=1e-6)
            trained = _data_parallel(s_block)
            losses = []
            for _ in tqdm(range(cfg.steps), desc=f"LKD block {k}", disable=not progress, leave=False):
                args, kwargs, target = block_io(teacher, t_block, share(next(stream)))
                refresh_weight_ranges(s_block)
                with torch.enable_grad():
                    loss = loss_fn(_first(trained(*args, **kwargs)).float(), target.float())
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"LKD block {k}: non-finite loss {loss.item()}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                losses.append(loss.item())
            refresh_weight_ranges(s_block)
            after = _loss_on(teacher, t_block, s_block, eval_batches, loss_fn)
            n = max(1, min(5, len(losses) // 2))
            report.append({"block": k, "eval_loss_before": before, "eval_loss_after": after,   # every rank: all rows
                           "train_loss_first": dist.mean_over_ranks(sum(losses[:n]) / n),     # shares: averaged
                           "train_loss_last": dist.mean_over_ranks(sum(losses[-n:]) / n)})
    finally:
        for q, state in saved:
            q.set_state(state)
        student.train(was_training)
    return report


def random_token_sampler(vocab_size: int, length: int, device) -> Callable[[int, torch.Generator], dict]:
    """LKD without any text: uniformly random token ids (Table I.3, "Random Data")."""
    return lambda n, g: {"input_ids": torch.randint(vocab_size, (n, length), generator=g).to(device)}


def window_sampler(ids: torch.Tensor, length: int, device) -> Callable[[int, torch.Generator], dict]:
    """Windows of ``length`` tokens at random offsets of a (1, n) token stream."""
    from ..tasks.perplexity import random_windows

    if ids.shape[1] < length:
        raise LKDError(f"the LKD text has {ids.shape[1]} tokens, fewer than one sequence of {length}")
    return lambda n, g: {"input_ids": random_windows(ids, n, length, g).to(device)}
