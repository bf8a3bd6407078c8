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

from pathlib import Path

import torch

from ..models import scratch
from ..models.families import family_of
from ..quant.sites import configure
from ..tasks import corpus, pretraining
from ..train import pretrain as training
from .base import Evaluation, KindError, Loaded, TaskKind, register


class Pretrain(TaskKind):
    objective: str
    arch: str

    def check(self) -> None:
        super().check()
        model, task = self.cfg.model, self.task
        if model.get("source") != "scratch":
            raise KindError(f"task {task.name!r} trains a model from scratch, but model {model.name!r} has source "
                            f"{model.get('source')!r}; use a from-scratch model (source: scratch): `qexp ls models`")
        try:
            arch = scratch.check_arch(model)
            if arch != self.arch:
                raise KindError(f"task {task.name!r} ({self.objective}) trains an {self.arch} model, but model "
                                f"{model.name!r} has arch {arch!r}")
            scratch.variant_of(model, int(task.seq_length))
            corpus.corpus_files(task)
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

    # -- load: data, tokenizer, the trained model -------------------------------------------------------------------
    def load(self) -> Loaded:
        task, cfg, ctx = self.task, self.cfg, self.ctx
        cache = Path(cfg.cache_dir)
        self.tokenizer, tok_desc = corpus.tokenizer_for(task, cache)
        raw = corpus.raw_dataset(task, cache)
        seq = int(task.seq_length)
        self.blocks = {s: corpus.blocks(raw[s], self.tokenizer, seq, self.objective) for s in ("train", "valid")}
        if len(self.blocks["train"]) == 0 or len(self.blocks["valid"]) == 0:
            raise KindError(f"the corpus yields no blocks of {seq} tokens (train {len(self.blocks['train'])}, valid "
                            f"{len(self.blocks['valid'])}); lower task.seq_length or add text")
        self.blocks = {s: b.with_format("torch") for s, b in self.blocks.items()}
        self.source = source = corpus.data_source(task)   # hashes the corpus files: once per run
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
            folder = training.folder_for(cache, cfg.model.name, task.name, key)
            if training.read_meta(folder) is None:
                with ctx.timer.stage("pretrain"):
                    self._train(folder, seq)
            hf = scratch.load(folder, variant)
            record["pretrain"] = {"folder": str(folder), **training.read_meta(folder)}
            identity = f"pretrained:{folder.name}"
        model = family_of(cfg.model).wrap(hf)
        configure(model, ctx.quant)
        model = model.to(ctx.device).eval()
        self.loaded = Loaded(model, self.tokenizer, identity, record)
        return self.loaded

    def _train(self, folder: Path, seq: int) -> None:
        task, ctx = self.task, self.ctx
        hf = scratch.build(self.cfg.model, len(self.tokenizer), seq, corpus.special_ids(self.tokenizer), ctx.seed)
        wrapper = family_of(self.cfg.model).wrap(hf).to(ctx.device)
        tr = task.train
        eval_batches = self._eval_batches(limit=int(tr.eval_batches) * int(task.eval.batch_size))

        def evaluate_fn(model):
            return pretraining.evaluate(model, eval_batches, ctx.device)

        training.pretrain(wrapper, hf, self.blocks["train"], pretraining.collator(self.tokenizer, self.objective,
                                                                                    float(task.mlm_probability)),
                          evaluate_fn, tr, ctx.seed, folder, ctx.device, ctx.progress,
                          save_fn=lambda path: self._save(hf, path))

    def _save(self, hf, path: Path) -> None:
        scratch.save(hf, path)
        self.tokenizer.save_pretrained(str(path))

    def _eval_batches(self, limit: int | None = None) -> list[dict]:
        task = self.task
        n = len(self.blocks["valid"])
        cap = task.eval.get("blocks")
        n = min(n, *(int(c) for c in (cap, limit) if c))
        return pretraining.fixed_batches(self.blocks["valid"], self.tokenizer, self.objective,
                                         int(task.eval.batch_size), int(task.eval_mask_seed),
                                         float(task.mlm_probability), indices=range(n))

    # -- calibration ----------------------------------------------------------------------------------------------
    def calibration_seed(self) -> int:
        s = self.ctx.calibration.get("seed")
        return self.ctx.seed if s is None else int(s)

    def calibration_batches(self):
        cal, device = self.ctx.calibration, self.ctx.device
        bs, nb, seed = int(cal.batch_size), int(cal.num_batches), self.calibration_seed()
        g = torch.Generator().manual_seed(seed)
        rows = torch.randperm(len(self.blocks["train"]), generator=g)[:bs * nb]
        data = pretraining.fixed_batches(self.blocks["train"], self.tokenizer, self.objective, bs, seed,
                                         float(self.task.mlm_probability), indices=rows)

        def batches():
            for b in data:
                yield {k: v.to(device) for k, v in b.items() if k != "special_tokens_mask"}

        return batches

    def adaround_batches(self, n: int):
        g = torch.Generator().manual_seed(self.calibration_seed() + 1)
        rows = torch.randperm(len(self.blocks["train"]), generator=g)[:n]
        data = pretraining.fixed_batches(self.blocks["train"], self.tokenizer, self.objective, 8,
                                         self.calibration_seed() + 1, float(self.task.mlm_probability), indices=rows)
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

    # -- evaluation -----------------------------------------------------------------------------------------------
    def delimiter_ids(self) -> list[int]:
        tok = self.tokenizer
        ids = [tok.cls_token_id, tok.sep_token_id, tok.eos_token_id, *tok.convert_tokens_to_ids([".", ","])]
        return sorted({i for i in ids if i is not None and i != tok.unk_token_id})

    def evaluate(self, model) -> Evaluation:
        batches = self._eval_batches()
        m = pretraining.evaluate(model, batches, self.ctx.device, self.bar, delimiter_ids=self.delimiter_ids())
        maps = m["attention_maps"]
        maps["tokens"] = self.tokenizer.convert_ids_to_tokens(maps["token_ids"])
        m["delimiters"] = self.tokenizer.convert_ids_to_tokens(self.delimiter_ids())
        m.update(eval_mask_seed=int(self.task.eval_mask_seed) if self.objective == "mlm" else None,
                 calibration_seed=self.calibration_seed(), tokenizer=self.loaded.record["tokenizer"]["name"])
        return Evaluation({"valid": m}, m["perplexity"], self.source)


@register
class PretrainMLM(Pretrain):
    """Masked-LM pre-training from scratch (BERT; Bondarenko et al. 2023), then PTQ: perplexity and outlier metrics."""
    name = "pretrain_mlm"
    causal = False
    objective, arch = "mlm", "bert"


@register
class PretrainCLM(Pretrain):
    """Causal-LM pre-training from scratch (pre-LN OPT; Bondarenko et al. 2023), then PTQ: perplexity and outliers."""
    name = "pretrain_clm"
    causal = True
    objective, arch = "clm", "opt"
