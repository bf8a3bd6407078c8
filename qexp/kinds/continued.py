"""Continued pre-training of a *pretrained* language model with its attention swapped (Bondarenko et al. 2023, Appendix
B.6, Table 9: OPT-1.3B fine-tuned with gated attention), then PTQ: a causal LM (``task=continue_clm model=smollm2_135m
+model/attention=gated_finetune``) or a BERT encoder as a masked LM (``task=continue_mlm model=minilm_l6
+model/attention=gated_finetune | clipped_alpha``), on ``task.data_dir=../shared/data/brown_austen``.

What differs from pre-training from scratch (:mod:`qexp.kinds.pretrain`, whose evaluation, calibration and search
objective this kind shares): the weights and the tokenizer are the model's own (any decoder ``model=`` loads:
package, hub, ``model.path``); the attention variant is ``vanilla`` or ``gated_finetune``
(:mod:`qexp.models.continued`); ``task.train.ffn_l2`` adds the paper's FFN activation regularization; ``task.train.gate_lr`` gives the gates their own
peak learning rate (null: the model's, as in the paper; the same schedule);
``task.train.max_steps=0`` evaluates the pretrained model as it is (Table 9's "before fine-tuning" row).

The masked LM: an encoder shipped without its MLM head (MiniLM-L6) gets a new one (:func:`qexp.models.continued.
with_mlm_head`), trained first with the encoder frozen (``task.head_warmup``: a stage of its own, cached and shared by
every variant and training seed, reported under ``record.head_warmup``); its evaluation scores fixed masks
(``task.eval_mask_seed``), as pre-training from scratch does.  The continued model is cached by everything that
changes its weights (the base model's identity included), so the FP row
and every PTQ recipe and calibration seed of one training seed share it; an interrupted run resumes from its last
complete checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..models import continued
from ..models.loading import ModelLoadError, load_model, load_tokenizer
from ..tasks import corpus, pretraining
from ..train import pretrain as training
from .base import Evaluation, KindError, Loaded, TaskKind, register
from .pretrain import Pretrain

class Continued(Pretrain):
    """Continued pre-training of a pretrained model (vanilla, gated or clipped-softmax attention), then PTQ."""
    quantized_training = False
    distributed = True        # data-parallel continued pre-training (the gates are parameters of the model DDP wraps)
    example = ""              # a pretrained model of the right family, for the messages

    def check(self) -> None:
        TaskKind.check(self)
        model, task = self.cfg.model, self.task
        self.tq = None   # a qpt recipe is refused by the base check (quantized_training is False)
        if model.get("source") == "scratch" and not model.get("path"):
            raise KindError(f"task {task.name!r} continues training a pretrained model, but model {model.name!r} is "
                            f"built from scratch (source: scratch); use task=pretrain_{self.lm_objective} for it, or a "
                            f"pretrained {self.arch} ({self.example}, model.path=/dir)")
        try:
            self.variant = continued.variant_of(model, int(task.seq_length))
            if self.causal and self.variant["name"] == "clipped":   # known before the model's type: the family
                continued.check_type("decoder", self.variant)
            if model.get("path"):   # a local folder: its architecture is known before any weight loads
                self._check_folder(Path(model.path))
        except continued.ContinuedModelError as e:
            raise KindError(str(e)) from None
        tr = task.train
        lam = tr.get("ffn_l2", 0.0)
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
            raise KindError(f"task.train.ffn_l2={lam!r} must be a number >= 0 (0: no FFN activation regularization)")
        gate_lr = tr.get("gate_lr")
        if gate_lr is not None and (isinstance(gate_lr, bool) or not isinstance(gate_lr, (int, float)) or gate_lr <= 0):
            raise KindError(f"task.train.gate_lr={gate_lr!r} must be a number > 0, or null (the gates learn at "
                            f"task.train.learning_rate: the paper)")
        if gate_lr is not None and self.variant["name"] != "gated_finetune":
            raise KindError(f"task.train.gate_lr={gate_lr} applies to gates, but the attention is "
                            f"{self.variant['name']} (use +model/attention=gated_finetune)")
        steps = tr.get("max_steps")
        if steps != 0:
            try:
                training.check_hyperparameters(tr)
            except ValueError as e:
                raise KindError(str(e)) from None
        self.check_training_task()
        self.check_objective()

    def check_objective(self) -> None:
        """What the objective adds to the check (the masked LM: its head warm-up and masking rate)."""

    def _check_folder(self, folder: Path) -> None:
        import json

        conf = folder / "config.json"
        if not conf.is_file():
            raise continued.ContinuedModelError(f"model.path={str(folder)!r} is not a Hugging Face model folder (no "
                                                f"config.json)")
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        data = json.loads(conf.read_text())
        archs = data.get("architectures") or []
        if self.causal:
            causal_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(data.get("model_type"))
            ok = causal_class is not None and (not archs or causal_class in archs
                                               or any(a.endswith("ForCausalLM") for a in archs))
        else:
            ok = data.get("model_type") == "bert"
        if not ok:
            raise continued.ContinuedModelError(f"model.path={str(folder)!r} holds a {', '.join(archs) or '?'} "
                                                f"({data.get('model_type')}), not a "
                                                f"{'causal LM' if self.causal else 'BERT encoder'}; {self.name} trains "
                                                f"a {self.arch} ({self.example})")
        continued.check_type(data.get("model_type"), self.variant)

    # -- load: the pretrained model, its tokenizer, the corpus in its tokens, the continued model --------------------
    def load(self) -> Loaded:
        from ..common import dist

        task, cfg, ctx = self.task, self.cfg, self.ctx
        cache = Path(cfg.cache_dir)
        seq = int(task.seq_length)

        def weights():
            try:
                hf = (base.model if base.model is not None else load_model(cfg.model, seed=ctx.seed).model).float()
                continued.check_type(getattr(hf.config, "model_type", None), self.variant)   # before any training
            except (ModelLoadError, continued.ContinuedModelError) as e:
                raise KindError(str(e)) from None
            return hf

        try:   # the tokenizer and identity first: a cached continued model needs no base weights
            with dist.main_first():   # a hub download once; the other ranks read the hub cache
                base = load_tokenizer(cfg.model)
        except ModelLoadError as e:
            raise KindError(str(e)) from None
        self.tokenizer = base.tokenizer
        self._prepare_tokenizer()
        with dist.main_first():   # tokenization and blocks once; the other ranks read the caches
            raw = corpus.raw_dataset(task, cache)
            self.blocks = {s: corpus.blocks(raw[s], self.tokenizer, seq, self.lm_objective) for s in ("train", "valid")}
        if len(self.blocks["train"]) == 0 or len(self.blocks["valid"]) == 0:
            raise KindError(f"the corpus yields no blocks of {seq} tokens; lower task.seq_length or add text")
        self.blocks = {s: b.with_format("torch") for s, b in self.blocks.items()}
        self.source = source = corpus.data_source(task)
        self.heldout = self._heldout_ids()
        tok_desc = {"name": "model", "vocab_size": len(self.tokenizer), "model": base.identity}
        record = {"tokenizer": tok_desc, "attention": self.variant, "base": base.identity,
                  "blocks": {s: len(b) for s, b in self.blocks.items()}}
        start, start_identity, stage = self._starting_model(weights, base.identity, source, tok_desc, seq)
        if stage is not None:
            record["head_warmup"] = stage
        if int(task.train.max_steps) == 0:
            wrapper = continued.attach(start(), cfg.model, self.variant, ctx.seed)
            record["pretrain"] = {"steps": 0, "continued": False, "diverged": None}
            identity = f"pretrained:{start_identity}"
        else:
            key = self._cache_key(start_identity, source, tok_desc, seq)
            folder = training.folder_for(cache, cfg.model.name, task.name, key)
            trained_now = dist.from_main(training.read_meta(folder) is None)   # every rank takes the main one's view
            if trained_now:
                with ctx.timer.stage("pretrain"):
                    self._continue(start(), folder)
            hf, wrapper = continued.load(folder, cfg.model, self.variant, ctx.seed, self.lm_objective)
            meta = training.read_meta(folder)
            record["pretrain"] = {"folder": str(folder), "trained_by_this_run": trained_now, **meta}
            identity = f"continued:{folder.name}"
        from ..quant.sites import configure

        configure(wrapper, ctx.quant)
        model = wrapper.to(ctx.device).eval()
        self.loaded = Loaded(model, self.tokenizer, identity, record)
        return self.loaded

    def _prepare_tokenizer(self) -> None:
        """The tokens the objective needs (the causal LM: an end-of-text token between lines, a padding token)."""

    def _starting_model(self, weights, identity: str, source: str, tok_desc: dict, seq: int):
        """``(start, identity, stage record)``: a function returning the model continued pre-training starts from,
        its identity (in the continued model's cache key) and the record of a preparation stage (None: none)."""
        return weights, identity, None

    def _cache_key(self, base: str, source: str, tok_desc: dict, seq: int) -> dict:
        """Everything that changes the continued weights: the base model (its identity: package version, GGUF file,
        path), the model config (attention variant), the corpus content, the sequence length, the training settings
        but how often to look or save, and the seed."""
        from omegaconf import OmegaConf

        model = OmegaConf.to_container(self.cfg.model, resolve=True)
        model.pop("name", None)
        tr = OmegaConf.to_container(self.task.train, resolve=True)
        for k in training.LOOK_KEYS:
            tr.pop(k, None)
        if tr.get("gate_lr", 0) is None:   # null: the model's rate, what every model cached before the key had
            tr.pop("gate_lr")
        return {"model": model, "base": base, "data": source, "tokenizer": tok_desc, "seq_length": int(seq),
                "train": tr, "seed": int(self.ctx.seed)}

    def _continue(self, hf, folder: Path) -> None:
        task, ctx = self.task, self.ctx
        tr = task.train
        wrapper = continued.attach(hf, self.cfg.model, self.variant, ctx.seed).to(ctx.device)
        try:
            penalty = continued.FFNPenalty(hf, float(tr.get("ffn_l2", 0.0)), wrapper)
        except continued.ContinuedModelError as e:
            raise KindError(str(e)) from None
        eval_batches = self._eval_batches(limit=int(tr.eval_batches) * int(task.eval.batch_size))
        extra = {"look": {k: tr.get(k) for k in training.LOOK_KEYS}, "attention": self.variant,
                 "ffn_l2": float(tr.get("ffn_l2", 0.0))}

        def evaluate_fn(model):
            return pretraining.evaluate(model, eval_batches, ctx.device)

        gate_lr = tr.get("gate_lr")
        make_optimizer = None
        if gate_lr is not None and getattr(hf, "qexp_gates", None) is not None:
            extra["gate_lr"] = float(gate_lr)

            def make_optimizer(groups, **kw):
                return torch.optim.AdamW(continued.gate_groups(groups, hf.qexp_gates, float(gate_lr)), **kw)

        training.pretrain(wrapper, hf, self.blocks["train"], self._collator(),
                          evaluate_fn, tr, ctx.seed, folder, ctx.device, ctx.progress,
                          save_fn=lambda path: continued.save(hf, path, self.variant), extra_meta=extra,
                          penalty=penalty if penalty.lam > 0 else None, make_optimizer=make_optimizer,
                          report=ctx.report(folder.name))

    # -- evaluation: perplexity and the outlier metrics (no delimiter statistics: those need the scratch attention) --
    def evaluate(self, model) -> Evaluation:
        diverged = (self.loaded.record.get("pretrain") or {}).get("diverged")
        if diverged:
            return Evaluation({"valid": {"diverged": diverged}}, None, self.source)
        from ..models.gate_finetune import gate_factors

        gates = getattr(model.hf_model, "qexp_gates", None)
        with gate_factors(gates) as factors:   # the gates' mean factor per layer and head, over the same pass
            m = pretraining.evaluate(model, self._eval_batches(), self.ctx.device, self.bar)
        m.update(calibration_seed=self.calibration_seed(), tokenizer="model",
                 eval_mask_seed=int(self.task.eval_mask_seed) if self.lm_objective == "mlm" else None)
        if gates is not None:
            m["gate_factor"] = factors
        metrics = {"valid": m}
        limit = (self.task.get("heldout_limit") or {}).get("windows")
        from ..tasks import perplexity

        for name, ids in self.heldout.items():
            metrics[name] = perplexity.evaluate_batched(model, ids, int(self.task.seq_length), self.ctx.device,
                                                        int(self.task.eval.batch_size), limit, self.bar)
        return Evaluation(metrics, m["perplexity"], self.source)

    def _collator(self):
        return pretraining.collator(self.tokenizer, self.lm_objective, self.mlm_probability())


@register
class ContinueCLM(Continued):
    """Continued causal-LM pre-training of a pretrained decoder (vanilla or gated attention), then PTQ."""
    name = "continue_clm"
    causal = True
    lm_objective, arch = "clm", "decoder"
    example = "model=smollm2_135m"

    def _prepare_tokenizer(self) -> None:
        if self.tokenizer.eos_token_id is None:
            raise KindError(f"model {self.cfg.model.name!r}: its tokenizer has no end-of-text token to separate lines")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token   # the causal collator pads (every block is full)


@register
class ContinueMLM(Continued):
    """Continued masked-LM pre-training of a pretrained BERT encoder (vanilla, gated or clipped-softmax attention),
    after a head warm-up with the encoder frozen, then PTQ."""
    name = "continue_mlm"
    causal = False
    lm_objective, arch = "mlm", "BERT encoder"
    example = "model=minilm_l6"
    WARMUP_KEYS = ("steps", "batch_size", "learning_rate", "warmup_steps", "seed")

    def check_objective(self) -> None:
        hw = self.task.get("head_warmup")
        if hw is None:
            raise KindError("task.head_warmup is missing (the masked-LM head's warm-up: steps, batch_size, "
                            "learning_rate, warmup_steps, seed)")
        unknown = sorted(set(hw) - set(self.WARMUP_KEYS))
        if unknown:
            raise KindError(f"task.head_warmup: unknown key(s) {unknown}; valid: {', '.join(self.WARMUP_KEYS)}")
        for k in self.WARMUP_KEYS:
            v = hw.get(k)
            positive = k in ("batch_size", "learning_rate")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (positive and v <= 0) \
                    or (k != "learning_rate" and int(v) != v):
                raise KindError(f"task.head_warmup.{k}={v!r} must be a{' positive' if positive else ' non-negative'} "
                                f"{'number' if k == 'learning_rate' else 'integer'}")
        if int(hw.warmup_steps) > int(hw.steps):
            raise KindError(f"task.head_warmup.warmup_steps={hw.warmup_steps} exceeds its steps={hw.steps}")
        p = self.task.get("mlm_probability")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
            raise KindError(f"task.mlm_probability={p!r} must lie in (0, 1) (the share of tokens masked)")

    def _prepare_tokenizer(self) -> None:
        tok = self.tokenizer
        missing = [n for n in ("mask_token", "pad_token", "cls_token", "sep_token") if getattr(tok, n) is None]
        if missing:
            raise KindError(f"model {self.cfg.model.name!r}: its tokenizer has no {', '.join(missing)}; the masked "
                            f"LM needs them")

    def _starting_model(self, weights, identity: str, source: str, tok_desc: dict, seq: int):
        """The encoder with its masked-LM head warmed up (encoder frozen): cached by the base model, the corpus, the
        tokens and the warm-up settings, so every variant and training seed starts from the same model."""
        from omegaconf import OmegaConf

        from ..common import dist

        hw = OmegaConf.to_container(self.task.head_warmup, resolve=True)
        tr = self._warmup_train(hw)
        trained = OmegaConf.to_container(tr, resolve=True)
        for k in training.LOOK_KEYS:   # how often to look or save changes no weight
            trained.pop(k, None)
        # every setting the warm-up's training reads (task.train with the head_warmup values in), not only head_warmup
        key = {"base": identity, "data": source, "tokenizer": tok_desc, "seq_length": int(seq),
               "mlm_probability": self.mlm_probability(), "train": trained, "seed": int(hw["seed"])}
        folder = training.folder_for(Path(self.cfg.cache_dir), self.cfg.model.name, "mlm_head", key)
        trained_now = dist.from_main(training.read_meta(folder) is None)
        if trained_now:
            with self.ctx.timer.stage("head_warmup"):
                self._warm_head(weights(), folder, tr, int(hw["seed"]))
        meta = training.read_meta(folder)
        vanilla = {"name": "vanilla"}

        def start():
            try:
                return continued.load_hf(folder, vanilla, "mlm")[0]
            except continued.ContinuedModelError as e:
                raise KindError(str(e)) from None

        return start, f"{identity}+mlm_head:{folder.name}", {"folder": str(folder), "trained_by_this_run": trained_now,
                                                             **meta}

    def _warmup_train(self, hw: dict):
        """The warm-up's training settings: the task's (betas, weight decay, schedule, ...) with head_warmup's steps,
        batch size, learning rate and warm-up steps; no FFN term, no gates."""
        from omegaconf import OmegaConf

        return OmegaConf.merge(self.task.train, {"max_steps": int(hw["steps"]), "batch_size": int(hw["batch_size"]),
                                                 "learning_rate": float(hw["learning_rate"]),
                                                 "warmup_steps": int(hw["warmup_steps"]), "ffn_l2": 0.0,
                                                 "gate_lr": None, "grad_accum": 1})

    def _warm_head(self, encoder, folder: Path, tr, seed: int) -> None:
        from ..models.families import family_of

        ctx = self.ctx
        try:
            hf = continued.with_mlm_head(encoder, seed)
        except continued.ContinuedModelError as e:
            raise KindError(str(e)) from None
        head = set(continued.head_parameters(hf))
        for n, p in hf.named_parameters():
            p.requires_grad_(n in head)
        wrapper = family_of(self.cfg.model).wrap(hf).to(ctx.device)
        eval_batches = self._eval_batches(limit=int(tr.eval_batches) * int(self.task.eval.batch_size))

        def evaluate_fn(model):
            return pretraining.evaluate(model, eval_batches, ctx.device)

        vanilla = {"name": "vanilla"}
        training.pretrain(wrapper, hf, self.blocks["train"], self._collator(), evaluate_fn, tr, seed,
                          folder, ctx.device, ctx.progress, save_fn=lambda path: continued.save(hf, path, vanilla),
                          extra_meta={"stage": "head_warmup", "trained": sorted(head), "frozen": "the encoder"},
                          report=ctx.report(folder.name))
