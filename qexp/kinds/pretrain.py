"""Pre-training from scratch (Bondarenko et al. 2023): a masked LM (``pretrain_mlm``, BERT) or a causal LM
(``pretrain_clm``, pre-LN OPT), trained -- or found in the cache, or resumed -- then quantized and evaluated.

One run = one trained model (``seed`` is the training seed) x one recipe x one calibration seed
(``calibration.seed``, default: the training seed).  The trained model is cached by everything that changes its
weights (:func:`qexp.train.pretrain.cache_key`), so the FP32 run and every PTQ recipe and calibration seed of one
training seed share it.  ``task.checkpoint=/dir`` evaluates a saved model instead (its attention variant must be the
configured one).  Calibration draws ``num_batches`` x ``batch_size`` random training blocks (masked, for the MLM)
from the calibration seed; evaluation scores fixed validation batches (masks from ``task.eval_mask_seed``).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..models import scratch
from ..models.families import family_of
from ..quant import training_linear
from ..quant.optim import QuantizedAdamW
from ..quant.sites import configure
from ..quant.training_linear import LinearQuant
from ..tasks import corpus, perplexity, pretraining
from ..train import pretrain as training
from .base import Evaluation, KindError, Loaded, TaskKind, register

log = logging.getLogger("qexp")


def scope_groups(groups: list[dict], hf: torch.nn.Module) -> list[dict]:
    """The authors' Adam-state scope (issue 31 #3): each AdamW group split into the weights of Linear/Conv1D layers
    (``quantize: True``) and the rest -- biases, LayerNorm, embeddings (and an LM head tied to them) -- whose states
    stay in full precision (``quantize: False``)."""
    from transformers.pytorch_utils import Conv1D

    embeddings = {id(m.weight) for m in hf.modules() if isinstance(m, torch.nn.Embedding)}
    linear = {id(m.weight) for m in hf.modules() if isinstance(m, (torch.nn.Linear, Conv1D))} - embeddings
    out = []
    for g in groups:
        for flag in (True, False):
            params = [p for p in g["params"] if (id(p) in linear) == flag]
            if params:
                out.append({**g, "params": params, "quantize": flag})
    return out


class Pretrain(TaskKind):
    lm_objective: str          # "mlm" | "clm": what the model is trained on
    arch: str
    quantized_training = True
    searches = True           # recipe.bcq.search and train_objective: the loss on training blocks
    distributed = True        # data-parallel training through the HF Trainer; the main process writes (issue 30)

    def check(self) -> None:
        super().check()
        model, task = self.cfg.model, self.task
        self.tq = self.ctx.spec.training
        if self.tq is not None:
            on = self.ctx.spec.ptq_groups_on
            if on:
                raise KindError(f"recipe {self.ctx.spec.recipe!r} has both a qpt block (quantized training) and PTQ "
                                f"quantizers ({', '.join(on)}); use one: qpt.during=eval quantizes a trained model")
        ds = task.get("downstream")
        if ds is not None and ds.get("enabled"):
            from ..tasks.zeroshot import local_task_names

            local = [t for t in ds.tasks if str(t).startswith("qexp_")]
            unknown = [t for t in local if t not in local_task_names()]
            if unknown:
                raise KindError(f"task.downstream.tasks: unknown local lm-eval task(s) {unknown}; valid: "
                                f"{', '.join(local_task_names())} (or lm-eval's own task names, hub)")
            if local and not (ds.get("data_dir") and Path(ds.data_dir).is_dir()):
                raise KindError(f"task.downstream.data_dir={ds.get('data_dir')!r} is not a folder; the local tasks "
                                f"{local} read the GLUE files from it (../shared/data/glue)")
        if model.get("source") != "scratch":
            raise KindError(f"task {task.name!r} trains a model from scratch, but model {model.name!r} has source "
                            f"{model.get('source')!r}; use a from-scratch model (source: scratch): `qexp ls models`")
        self.check_training_task()
        try:
            arch = scratch.check_arch(model)
            if arch != self.arch:
                raise KindError(f"task {task.name!r} ({self.lm_objective}) trains an {self.arch} model, but model "
                                f"{model.name!r} has arch {arch!r}")
            scratch.variant_of(model, int(task.seq_length))
            training.check_hyperparameters(task.train)
        except (scratch.ScratchModelError, ValueError) as e:
            raise KindError(str(e)) from None
        if str(task.tokenizer.name) not in corpus.TOKENIZERS + ("path",):
            raise KindError(f"task.tokenizer.name={task.tokenizer.name!r} is unknown; valid: "
                            f"{', '.join(corpus.TOKENIZERS)}, path")
        ckpt = task.get("checkpoint")
        if ckpt and not (Path(ckpt) / "model.safetensors").is_file():
            raise KindError(f"task.checkpoint={str(ckpt)!r} holds no model.safetensors (a folder written by a "
                            f"qexp pre-training run: cache_dir/pretrain/<name>)")
        if ckpt:
            try:
                scratch.checkpoint_config(Path(ckpt), scratch.variant_of(model, int(task.seq_length)))
            except scratch.ScratchModelError as e:
                raise KindError(f"task.checkpoint={str(ckpt)!r}: {e}") from None

    def check_training_task(self) -> None:
        """What every training task of this family must hold before anything loads: held-out files that exist, no fp16
        on a CPU, an integer block length, a corpus folder with its files."""
        task = self.task
        for name, entry in (task.get("heldout") or {}).items():
            if entry.get("data_dir"):
                path = Path(entry.data_dir) / entry.files.eval
                if not path.is_file():
                    raise KindError(f"task.heldout.{name}: no file {path} (data_dir + files.eval)")
        precision = str((task.get("train") or {}).get("precision", "fp32"))
        if precision == "fp16" and str(self.ctx.device).startswith("cpu"):   # issue 27 #7: trained on without a word
            raise KindError("task.train.precision=fp16 needs a CUDA device (fp16 mixed precision with loss scaling); "
                            "on this CPU use fp32 (the CPU presets) or bf16")
        seq = task.get("seq_length")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 2:   # issue 27 #14: ZeroDivisionError later
            raise KindError(f"task.seq_length={seq!r} must be an integer >= 2 (tokens per training block)")
        try:
            corpus.corpus_files(task)
        except ValueError as e:
            raise KindError(str(e)) from None

    # -- load: data, tokenizer, the trained model -------------------------------------------------------------------
    def load(self) -> Loaded:
        task, cfg, ctx = self.task, self.cfg, self.ctx
        cache = Path(cfg.cache_dir)
        from ..common import dist

        seq = int(task.seq_length)
        with dist.main_first():   # tokenizer training, tokenization and blocks once; the other ranks read the caches
            self.tokenizer, tok_desc = corpus.tokenizer_for(task, cache)
            raw = corpus.raw_dataset(task, cache)
            self.blocks = {s: corpus.blocks(raw[s], self.tokenizer, seq, self.lm_objective)
                           for s in ("train", "valid")}
        if len(self.blocks["train"]) == 0 or len(self.blocks["valid"]) == 0:
            raise KindError(f"the corpus yields no blocks of {seq} tokens (train {len(self.blocks['train'])}, valid "
                            f"{len(self.blocks['valid'])}); lower task.seq_length or add text")
        self.blocks = {s: b.with_format("torch") for s, b in self.blocks.items()}
        self.source = source = corpus.data_source(task)   # hashes the corpus files: once per run
        self.heldout = self._heldout_ids()                  # before training: a missing text fails now
        variant = scratch.variant_of(cfg.model, seq)
        record = {"tokenizer": tok_desc, "attention": variant.as_dict(), "blocks": {s: len(b) for s, b in
                                                                                   self.blocks.items()}}
        if task.get("checkpoint"):
            hf = scratch.load(Path(task.checkpoint), variant)
            record["pretrain"] = {"checkpoint": str(task.checkpoint), **(training.read_meta(Path(task.checkpoint))
                                                                          or {})}
            identity = f"checkpoint:{task.checkpoint}"
        else:
            key = training.cache_key(cfg.model, task, source, tok_desc, seq, ctx.seed)
            if self.tq is not None and self.tq.trains:
                key["qpt"] = self.tq.describe()   # absent for FP training: the FP baseline's key is unchanged
            folder = training.folder_for(cache, cfg.model.name, task.name, key)
            trained_now = training.read_meta(folder) is None
            dist.barrier()   # every rank decided before the main one may write the model
            if trained_now:
                with ctx.timer.stage("pretrain"):
                    self._train(folder, seq)
            hf = scratch.load(folder, variant)
            meta = training.read_meta(folder)
            record["pretrain"] = {"folder": str(folder), "trained_by_this_run": trained_now, **meta}
            asked = {k: task.train.get(k) for k in training.LOOK_KEYS}
            used = meta.get("look") or {}
            if not trained_now and used and used != asked:   # issue 27 #9: record what was done
                differ = {k: (used.get(k), asked[k]) for k in asked if used.get(k) != asked[k]}
                log.warning("the cached pre-trained model was trained with %s; its curves follow those, not this "
                            "run's task.train values (they do not change the weights)",
                            ", ".join(f"{k}={u} (asked {a})" for k, (u, a) in differ.items()))
                record["pretrain"]["look_differs"] = {k: {"trained_with": u, "asked": a} for k, (u, a) in differ.items()}
            identity = f"pretrained:{folder.name}"
        model = family_of(cfg.model).wrap(hf)
        configure(model, ctx.quant)
        if self.tq is not None:
            record["qpt"] = {**self.tq.describe(), "layers": self._attach(model, self._eval_spec())}
        model = model.to(ctx.device).eval()
        self.loaded = Loaded(model, self.tokenizer, identity, record)
        return self.loaded

    def _train(self, folder: Path, seq: int) -> None:
        task, ctx = self.task, self.ctx
        hf = scratch.build(self.cfg.model, len(self.tokenizer), seq, corpus.special_ids(self.tokenizer), ctx.seed)
        wrapper = family_of(self.cfg.model).wrap(hf).to(ctx.device)
        tr = task.train
        make_optimizer, extra = None, {"look": {k: tr.get(k) for k in training.LOOK_KEYS}}
        if self.tq is not None and self.tq.trains:
            extra["qpt_layers"] = self._attach(wrapper, self.tq.linear)
            if self.tq.m1 is not None or self.tq.m2 is not None:
                tq = self.tq

                def make_optimizer(groups, **kw):
                    if tq.adam_scope == "linear_weights":
                        groups = scope_groups(groups, hf)
                    return QuantizedAdamW(groups, m1=tq.m1, m2=tq.m2, timing=tq.timing, **kw)
        eval_batches = self._eval_batches(limit=int(tr.eval_batches) * int(task.eval.batch_size))

        def evaluate_fn(model):
            return pretraining.evaluate(model, eval_batches, ctx.device)

        training.pretrain(wrapper, hf, self.blocks["train"], pretraining.collator(self.tokenizer, self.lm_objective,
                                                                                    float(task.mlm_probability)),
                          evaluate_fn, tr, ctx.seed, folder, ctx.device, ctx.progress,
                          save_fn=lambda path: self._save(hf, path), make_optimizer=make_optimizer, extra_meta=extra,
                          report=ctx.report(folder.name))

    # -- quantized training (recipe.qpt) --------------------------------------------------------------------------
    def _eval_spec(self) -> LinearQuant | None:
        """What a quantized model computes at evaluation: its forward quantizers (weights, activations)."""
        lin = self.tq.linear
        if lin.weights is None and lin.activations is None:
            return None
        return LinearQuant(weights=lin.weights, activations=lin.activations)

    def _attach(self, model, spec: LinearQuant | None) -> int:
        try:
            return len(training_linear.attach(model, spec, list(self.tq.sites), list(self.tq.exclude_sites)))
        except training_linear.TrainingQuantError as e:
            raise KindError(f"recipe.qpt: {e}") from None

    def mlm_probability(self) -> float:
        """The masking rate of the masked LM (a causal LM's task may leave the key out: nothing reads it)."""
        return float(self.task.get("mlm_probability", 0.15))

    def _save(self, hf, path: Path) -> None:
        scratch.save(hf, path)
        self.tokenizer.save_pretrained(str(path))

    def _eval_batches(self, limit: int | None = None) -> list[dict]:
        task = self.task
        n = len(self.blocks["valid"])
        cap = task.eval.get("blocks")
        n = min(n, *(int(c) for c in (cap, limit) if c))
        return pretraining.fixed_batches(self.blocks["valid"], self.tokenizer, self.lm_objective,
                                         int(task.eval.batch_size), int(task.get("eval_mask_seed", 0)),
                                         self.mlm_probability(), indices=range(n))

    # -- calibration ----------------------------------------------------------------------------------------------
    def calibration_seed(self) -> int:
        s = self.ctx.calibration.get("seed")
        return self.ctx.seed if s is None else int(s)

    def data_seed(self) -> int:   # every data stream (calibration, AdaRound, LKD, objective) from the calibration seed
        return self.calibration_seed()

    def calibration_batches(self):
        cal, device = self.ctx.calibration, self.ctx.device
        bs, nb, seed = int(cal.batch_size), int(cal.num_batches), self.stream_seed("calibration")
        g = torch.Generator().manual_seed(seed)
        rows = torch.randperm(len(self.blocks["train"]), generator=g)[:bs * nb]
        data = pretraining.fixed_batches(self.blocks["train"], self.tokenizer, self.lm_objective, bs, seed,
                                         self.mlm_probability(), indices=rows)

        def batches():
            for b in data:
                yield {k: v.to(device) for k, v in b.items() if k != "special_tokens_mask"}

        return batches

    def adaround_batches(self, n: int):
        seed = self.stream_seed("adaround")
        rows = torch.randperm(len(self.blocks["train"]), generator=torch.Generator().manual_seed(seed))[:n]
        data = pretraining.fixed_batches(self.blocks["train"], self.tokenizer, self.lm_objective, 8, seed,
                                         self.mlm_probability(), indices=rows)
        return lambda: ({k: v.to(self.ctx.device) for k, v in b.items() if k in ("input_ids", "attention_mask")}
                        for b in data)

    def lkd_length(self) -> int:
        return int(self.task.seq_length)

    def lkd_fixed_length(self) -> int | None:
        return int(self.task.seq_length)

    def lkd_sampler(self, length: int):
        train = self.blocks["train"]

        def sample(n, g):
            rows = torch.randint(len(train), (n,), generator=g)
            return {"input_ids": torch.stack([train[int(i)]["input_ids"] for i in rows]).to(self.ctx.device)}

        return sample

    # -- search objective (recipe.bcq.search, train_objective) ------------------------------------------------------
    def objective_data(self, n: int) -> list[dict]:
        """``n`` training blocks (never the valid split or the held-out texts), another draw than calibration's and
        AdaRound's (the ``objective`` seed stream), collated once in batches of 8 (the MLM masks drawn once from it)."""
        seed = self.stream_seed("objective")
        g = torch.Generator().manual_seed(seed)
        train = self.blocks["train"]
        rows = torch.randperm(len(train), generator=g)[:min(n, len(train))]
        return pretraining.fixed_batches(train, self.tokenizer, self.lm_objective, 8, seed,
                                         self.mlm_probability(), indices=rows)

    @torch.no_grad()
    def objective(self, model, data) -> dict:
        """The mean token loss over :meth:`objective_data` (batches weighted by their sequences; every block has
        ``task.seq_length`` tokens) and its perplexity; a trial whose loss is not finite scores inf."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            for batch in data:
                batch = {k: v.to(self.ctx.device) for k, v in batch.items() if k != "special_tokens_mask"}
                b = int(batch["input_ids"].shape[0])
                total += float(model(**batch).loss) * b
                count += b
        finally:
            model.train(was_training)
        loss = total / count if math.isfinite(total) else float("inf")
        return {"loss": loss, "metric": perplexity.perplexity_of(loss), "metric_name": "perplexity",
                "higher_is_better": False, "n": count}

    # -- evaluation -----------------------------------------------------------------------------------------------
    def delimiter_ids(self) -> list[int]:
        tok = self.tokenizer
        ids = [tok.cls_token_id, tok.sep_token_id, tok.eos_token_id, *tok.convert_tokens_to_ids([".", ","])]
        return sorted({i for i in ids if i is not None and i != tok.unk_token_id})

    def _heldout_ids(self) -> dict:
        """Token ids of each held-out text (``task.heldout``: WikiText-2 and PTB test for the causal LM)."""
        out = {}
        for name, entry in (self.task.get("heldout") or {}).items():
            try:
                text = perplexity.load_text(OmegaConf.merge({"name": f"heldout.{name}"}, entry), "eval")
            except (FileNotFoundError, RuntimeError, OSError) as e:
                raise KindError(f"task.heldout.{name}: {e}") from None
            out[name] = perplexity.tokenize(self.tokenizer, text)
        return out

    def evaluate(self, model) -> Evaluation:
        diverged = (self.loaded.record.get("pretrain") or {}).get("diverged")
        if diverged:
            return Evaluation({"valid": {"diverged": diverged}}, None, self.source)   # no score, never a NaN
        batches = self._eval_batches()
        m = pretraining.evaluate(model, batches, self.ctx.device, self.bar, delimiter_ids=self.delimiter_ids())
        maps = m["attention_maps"]
        maps["tokens"] = self.tokenizer.convert_ids_to_tokens(maps["token_ids"])
        m["delimiters"] = self.tokenizer.convert_ids_to_tokens(self.delimiter_ids())
        m.update(eval_mask_seed=int(self.task.eval_mask_seed) if self.lm_objective == "mlm" else None,
                 calibration_seed=self.calibration_seed(), tokenizer=self.loaded.record["tokenizer"]["name"])
        metrics = {"valid": m}
        limit = (self.task.get("heldout_limit") or {}).get("windows")
        for name, ids in self.heldout.items():
            metrics[name] = perplexity.evaluate_batched(model, ids, int(self.task.seq_length), self.ctx.device,
                                                        int(self.task.eval.batch_size), limit, self.bar)
        ds = self.task.get("downstream")
        if ds is not None and ds.get("enabled"):
            from ..tasks import zeroshot

            metrics["downstream"] = zeroshot.evaluate(model.hf_model, self.tokenizer, ds, self.ctx.device,
                                                      self.ctx.progress)
            metrics["downstream_avg"] = zeroshot.score(metrics["downstream"], ds)
        return Evaluation(metrics, m["perplexity"], self.source)


@register
class PretrainMLM(Pretrain):
    """Masked-LM pre-training from scratch (BERT; Bondarenko et al. 2023), then PTQ: perplexity and outlier metrics."""
    name = "pretrain_mlm"
    causal = False
    lm_objective, arch = "mlm", "bert"


@register
class PretrainCLM(Pretrain):
    """Causal-LM pre-training from scratch (pre-LN OPT; Bondarenko et al. 2023), then PTQ: perplexity and outliers."""
    name = "pretrain_clm"
    causal = True
    lm_objective, arch = "clm", "opt"
