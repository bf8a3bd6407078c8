"""What every task kind provides to the pipeline (:mod:`qexp.experiment.pipeline`), and the registry of kinds.

A kind (GLUE, label-free text, perplexity, lm-eval, next pre-training) is one module in ``qexp/kinds/`` holding one
registered :class:`TaskKind` subclass; ``task.kind`` in ``conf/task/*.yaml`` names it.  The pipeline calls, in
order: :meth:`TaskKind.check` (before anything loads), :meth:`~TaskKind.load` (the wrapped, configured model),
:meth:`~TaskKind.calibration_batches`, optionally :meth:`~TaskKind.adaround_batches` / :meth:`~TaskKind.lkd_sampler`
(post-weight steps) and :meth:`~TaskKind.train` (QAT), then :meth:`~TaskKind.evaluate`.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable

from ..common.registry import Registry
from ..models.families import family_of

Batches = Callable[[], Iterable[dict]]          # a fresh iterable of model inputs each call
Sampler = Callable[[int, "object"], dict]       # (n, torch.Generator) -> one batch of n sequences


class KindError(ValueError):
    pass


# Named seed streams: every draw a run makes from the task's data (calibration batches, AdaRound's samples, LKD's
# training and held-out batches, the search objective's examples) has its own stream, seeded
# ``TaskKind.data_seed() + offset``, so no two steps share draws and adding a step never shifts another's.  The offsets
# are the ones every committed record was made with (calibration 0, AdaRound +1, LKD +2/+3, objective +4).
SEED_STREAMS = {"calibration": 0, "adaround": 1, "lkd_train": 2, "lkd_eval": 3, "objective": 4}


@dataclass
class RunContext:
    """One run's resolved inputs, computed once by the pipeline."""
    cfg: object                 # the composed DictConfig (paths absolute): the task's and model's own settings
    spec: object                # qexp.experiment.spec.RunSpec: the recipe, calibration and backend, interpreted once
    device: str
    timer: object               # qexp.experiment.timer.Timer
    run_id: str

    @property
    def quant(self) -> dict:
        """The quant config every site takes its spec from (:attr:`RunSpec.quant`)."""
        return self.spec.quant

    @property
    def calibration(self):
        """The effective calibration group (QAT's init_calibration merged; :attr:`RunSpec.calibration`)."""
        return self.spec.calibration

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def progress(self) -> bool:
        return bool(self.cfg.progress)

    def report(self, name: str) -> dict:
        """The Trainer's reporting arguments of the training called ``name`` (:mod:`qexp.train.reporting`)."""
        from ..train.reporting import trainer_args

        return trainer_args(self.cfg.get("report_to"), self.cfg.get("tb_dir", "results/tb"), name)


@dataclass
class Evaluation:
    metrics: dict
    score: float
    data_source: str


@dataclass
class Loaded:
    """A kind's model after :meth:`TaskKind.load`: the quantizable wrapper (configured, on the device, eval mode)."""
    model: object
    tokenizer: object
    identity: str
    record: dict = field(default_factory=dict)   # kind-specific record fields (e.g. GLUE's ``finetune``)


class TaskKind:
    name: ClassVar[str]
    causal: ClassVar[bool | None] = None      # True: needs a decoder family, False: an encoder, None: either
    trains: ClassVar[bool] = False            # whether QAT (a labelled training set) applies
    quantized_training: ClassVar[bool] = False  # whether a recipe's qpt block (quantized pre-training) applies
    searches: ClassVar[bool] = False          # whether it has a search objective on training data (recipe.bcq.search)
    distributed: ClassVar[bool] = False       # whether it runs under torchrun / accelerate launch (issue 30)

    def __init__(self, ctx: RunContext):
        self.ctx, self.cfg, self.task = ctx, ctx.cfg, ctx.cfg.task
        self.loaded: Loaded | None = None

    # -- before anything loads ------------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse a config this kind cannot honour (model family, QAT, LKD sequence length)."""
        family = family_of(self.cfg.model)
        if self.causal is not None and family.causal != self.causal:
            want = "a decoder model (a causal LM)" if self.causal else "an encoder model"
            raise KindError(f"task {self.task.name!r} ({self.name}) needs {want}, but model {self.cfg.model.name!r} "
                            f"is of family {family.name!r}; `qexp ls models` lists the models")
        for split, n in dict(self.task.get("limit") or {}).items():   # issue 27 #14: TypeError deep in the loader
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise KindError(f"task.limit.{split}={n!r} must be a positive integer or null (all examples)")
        spec = self.ctx.spec
        if spec.qat is not None and not self.trains:
            raise KindError(f"recipe {spec.recipe!r} trains (QAT) on labelled data, but task {self.task.name!r} is a "
                            f"{self.name} task; valid: the GLUE tasks (`qexp ls tasks`)")
        if spec.training is not None and not self.quantized_training:
            raise KindError(f"recipe {spec.recipe!r} quantizes training from scratch (qpt), but task "
                            f"{self.task.name!r} is a {self.name} task; valid: the pre-training tasks "
                            f"(pretrain_clm, qpt_clm, ...: `qexp ls tasks`)")
        if spec.steps.bcq is not None and spec.steps.bcq_search.enabled:
            if not self.searches:
                raise KindError(f"recipe.bcq.search.mode={spec.steps.bcq_search.mode} needs an objective on the "
                                f"task's training data, which task {self.task.name!r} ({self.name}) has not; valid: "
                                f"the GLUE, perplexity and pre-training tasks (`qexp ls tasks`)")
            self.check_search_data()
        lkd = spec.steps.lkd
        if lkd is not None and lkd.data == "task":
            fixed, asked = self.lkd_fixed_length(), lkd.seq_length
            if fixed is not None and asked is not None and int(asked) != fixed:
                raise KindError(f"recipe.lkd.seq_length={asked} cannot apply to task {self.task.name!r}: its own "
                                f"sequences have {fixed} tokens (LKD on task data uses them); valid: "
                                f"recipe.lkd.seq_length={fixed} or null, or recipe.lkd.data=random|text")

    def data_seed(self) -> int:
        """The seed every data stream starts from: the run's seed (the pre-training kinds: ``calibration.seed``, so one
        trained model is calibrated under several seeds)."""
        return self.ctx.seed

    def stream_seed(self, stream: str) -> int:
        """The seed of one named draw (:data:`SEED_STREAMS`); an unknown name lists the streams."""
        if stream not in SEED_STREAMS:
            raise KeyError(f"unknown seed stream {stream!r}; valid: {', '.join(SEED_STREAMS)}")
        return self.data_seed() + SEED_STREAMS[stream]

    def check_search_data(self) -> None:
        """Refuse a search whose objective data would be the evaluated data."""

    def lkd_fixed_length(self) -> int | None:
        """The length of the task's own LKD sequences when the kind cannot change it (None: any length works)."""
        return None

    # -- the pipeline's steps -------------------------------------------------------------------------------------
    def load(self) -> Loaded:
        raise NotImplementedError

    def calibration_batches(self) -> Batches:
        """Exactly ``calibration.num_batches`` batches of ``calibration.batch_size`` sequences."""
        raise NotImplementedError

    def adaround_batches(self, n: int) -> Batches:
        """``n`` task sequences for AdaRound (another draw than calibration's)."""
        raise NotImplementedError

    def lkd_length(self) -> int:
        """LKD's sequence length when the recipe gives none."""
        raise NotImplementedError

    def lkd_sampler(self, length: int) -> Sampler:
        """Batches of the task's own inputs for LKD (``recipe.lkd.data=task``)."""
        raise NotImplementedError

    def objective_data(self, n: int):
        """``n`` examples of the task's *training* data (never an evaluation split) for a search objective
        (recipe.bcq.search): another draw than calibration's, the same every trial."""
        raise KindError(f"task {self.task.name!r} ({self.name}) has no search objective on training data; "
                        f"recipe.bcq.search works on: glue, perplexity, pretrain_mlm/clm (`qexp ls tasks`)")

    def objective(self, model, data) -> dict:
        """The model's mean loss on ``data`` (:meth:`objective_data`) and the task metric: ``{"loss", "metric",
        "metric_name", "higher_is_better", "n"}``."""
        raise NotImplementedError

    def bar(self, it, desc: str, total: int | None = None):
        """``it`` with a progress bar when ``progress=true``."""
        from tqdm.auto import tqdm

        return tqdm(it, desc=desc, total=total, disable=not self.ctx.progress, leave=False)

    def train(self, model) -> dict:
        raise KindError(f"task kind {self.name!r} does not train")

    def evaluate(self, model) -> Evaluation:
        raise NotImplementedError


KINDS: Registry[type[TaskKind]] = Registry("task kind")


def register(cls: type[TaskKind]) -> type[TaskKind]:
    return KINDS.register(cls.name)(cls)


def load_kinds() -> Registry[type[TaskKind]]:
    """Import every module of ``qexp.kinds`` (each registers its kind): a new kind is one new module."""
    from .. import kinds as package

    for mod in pkgutil.iter_modules(package.__path__):
        if mod.name != "base":
            importlib.import_module(f"{package.__name__}.{mod.name}")
    return KINDS


def kind(name: str) -> type[TaskKind]:
    """The kind class registered as ``name`` (an unknown name lists the valid ones)."""
    return load_kinds().get(name)
