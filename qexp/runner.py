"""``qexp run``: load model and task -> fine-tune FP32 (cached) -> calibrate -> evaluate -> write one record."""
from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import set_seed

from . import qat, records
from .analysis import quantization_errors
from .inference import BACKENDS, attach
from .finetune import cache_dir_for, cache_key, finetune, load_cached
from .lkd import LKDConfig, apply_lkd, random_token_sampler, window_sampler
from .models.loading import load_model
from .models.quant_bert import QuantEncoder
from .models.quantizable import quantizable
from .quant.adaround import AdaRoundConfig, apply_adaround
from .quant.calibrate import calibrate
from .quant.quantizer import QuantSpec
from .quant.sites import GROUPS, configure, quantizers
from .tasks import perplexity, text_outliers
from .tasks.encode import encode, limit, loader, sample
from .tasks.glue import load_split
from .tasks.metrics import compute, task_score

log = logging.getLogger("qexp")

# no recipe = this, which equals conf/recipe/fp32.yaml (tested), so both spellings give the same run id
FP32 = {"name": "fp32", "table_row": {"table": "bondarenko2021_table1", "row": "FP32"},
        "quant": {"weights": {"enabled": False}, "activations": {"enabled": False}, "sites": []}}


class Timer:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        yield
        self.stages[name] = round(self.stages.get(name, 0.0) + time.perf_counter() - t0, 3)


def pick_device(spec: str) -> str:
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={spec!r} but CUDA is not available; valid here: auto, cpu")
    return spec


def _estimator(est_cfg, momentum) -> dict:
    est = dict(est_cfg) if not isinstance(est_cfg, str) else {"name": est_cfg}
    if est.get("name") == "running_minmax":
        est.setdefault("momentum", momentum)
    return est


def _enabled(recipe, key: str) -> bool:
    """Whether the recipe's optional step ``key`` (``qat``, ``adaround``) is present and not switched off."""
    step = recipe.get(key)
    return step is not None and bool(step.get("enabled", True))


def _qat_on(recipe) -> bool:
    return _enabled(recipe, "qat")


def effective_calibration(cfg):
    """The calibration group, with a QAT recipe's own range initialisation on top (``recipe.qat.init_calibration``;
    the authors' QAT README initialises from 16 padded sequences, not from the per-task PTQ winners)."""
    if _qat_on(cfg.recipe) and cfg.recipe.qat.get("init_calibration"):
        return OmegaConf.merge(cfg.calibration, cfg.recipe.qat.init_calibration)
    return cfg.calibration


def quant_config(recipe: dict, calibration) -> dict:
    """The recipe says what to quantize; the calibration group gives the default range estimators."""
    q = recipe.get("quant") or {}
    out = {"sites": list(q.get("sites") or [])}
    for group in GROUPS:
        spec = dict(q.get(group) or {"enabled": False})
        # linear inputs are activations: they take the activation estimator unless the recipe names one
        spec.setdefault("estimator", _estimator(calibration["weights" if group == "weights" else "activations"],
                                                calibration.momentum))
        QuantSpec.from_config(spec)  # fail before any expensive work
        out[group] = spec
    return out


def site_summary(model) -> dict:
    out = {}
    for key, group in (("activation", "activations"), ("weight", "weights"), ("input", "inputs")):
        qs = [q for q in quantizers(model) if q.group == group]
        bits = Counter(str(q.spec.bits) for q in qs if q.spec.enabled)
        out[key] = {"sites": len(qs), "quantized": sum(bits.values()), "bits": dict(sorted(bits.items()))}
    return out


def memory_footprint(model) -> dict:
    """Model size from the actual bit-widths: every quantized weight at its bits, every other parameter (biases,
    unquantized weights) at 32; the reduction is relative to all-FP32 (Bondarenko et al. 2021, Table 7)."""
    bits = total = 0
    for m in model.modules():
        inner, q = getattr(m, "inner", None), getattr(m, "weight_quantizer", None)
        if inner is None or q is None:
            continue
        for name, p in inner.named_parameters(recurse=False):
            b = q.spec.bits if (name == "weight" and q.spec.enabled) else 32
            bits += b * p.numel()
            total += p.numel()
    return {"parameters": total, "bits": bits, "reduction": round(32 * total / bits, 4) if bits else None}


def _progress(enabled: bool):
    def wrap(it, desc, total=None):
        return tqdm(it, desc=desc, total=total, disable=not enabled, leave=False)

    return wrap


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def predict(model, dl, device, progress):
    model.eval()
    logits, labels = [], []
    for batch in progress(dl, desc="evaluation"):
        logits.append(model(**_to(batch, device)).logits.float().cpu())
        labels.append(batch["labels"])
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def _abs(path: str | None, cwd: Path) -> str | None:
    if not path:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (cwd / p).resolve())


def data_source(task) -> str:
    """Where a GLUE task's data comes from (part of the fine-tuning cache key and of the record)."""
    return f"tsv:{task.data_dir}" if task.data_dir else f"hub:{task.hub.path}/{task.hub.name}"


def finetune_folder(cfg, model_identity: str) -> Path:
    """The fine-tuning cache folder of (model, task data, seed, hyper-parameters)."""
    key = cache_key(model_identity, cfg.task, data_source(cfg.task), int(cfg.seed))
    return cache_dir_for(Path(cfg.cache_dir), cfg.model.name, key)


def run_glue(cfg, qcfg, device, timer, progress, rid) -> dict:
    task, seed = cfg.task, int(cfg.seed)
    data_dir = task.data_dir
    with timer.stage("load"):
        set_seed(seed)  # the new classification head's init depends on the seed
        loaded = load_model(cfg.model, num_labels=int(task.num_labels), seed=seed)
        configure(QuantEncoder(loaded.model), qcfg)  # site rules are checked before any training
        train_raw = limit(load_split(task, "train", data_dir), task.limit.train)
    tok = loaded.tokenizer
    source = data_source(task)
    folder = finetune_folder(cfg, loaded.identity)
    cached = load_cached(folder)
    if cached is not None:
        model, ft_meta = cached
        ft_meta = {**ft_meta, "cached": True}
        log.info("fine-tuned checkpoint found in cache: %s", folder)
    else:
        with timer.stage("finetune"):
            train = encode(train_raw, tok, int(task.max_length), bool(task.pad_to_max_length))
            ft_meta = {**finetune(loaded.model, tok, train, task, seed, folder, device, cfg.progress), "cached": False}
        model = loaded.model
    ft_meta["checkpoint"] = str(folder)
    qmodel = QuantEncoder(model).to(device).eval()
    configure(qmodel, qcfg)
    recipe = cfg.recipe
    qat_cfg = recipe.get("qat")
    qat_on = _qat_on(recipe)
    cal = effective_calibration(cfg)
    extra = {}
    with timer.stage("calibrate"):
        n = int(cal.batch_size) * int(cal.num_batches)
        cal_ds = encode(sample(train_raw, n, seed), tok, int(task.max_length), bool(cal.pad_to_max_length))
        batches = lambda: (_to(b, device) for b in loader(cal_ds, tok, int(cal.batch_size)))  # noqa: E731
        def adaround_data(n: int):  # n training sequences, another draw than calibration's
            data = encode(sample(train_raw, n, seed + 1), tok, int(task.max_length), bool(task.pad_to_max_length))
            return lambda: (_to(b, device) for b in loader(data, tok, 64))

        def lkd_task_sampler(length: int):  # training inputs padded to max_length (the authors' LKD batches)
            data = encode(train_raw, tok, int(task.max_length), True).with_format("torch")
            cols = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in data.column_names]
            table = {c: data[c] for c in cols}
            return lambda n, g: {c: v[torch.randint(len(v), (n,), generator=g)].to(device) for c, v in table.items()}

        hook = _post_weight_hook(recipe, adaround_data, lkd_task_sampler, int(task.max_length), tok, seed,
                                 device, cfg.progress, extra)
        calibrate(qmodel, batches, int(cal.num_batches), progress=cfg.progress, after_weights=hook)
        extra.update(_errors(qmodel, batches))
    if qat_on:
        hp = qat.hyperparameters(qat_cfg)
        with timer.stage("qat"):
            train = encode(train_raw, tok, int(task.max_length), bool(task.pad_to_max_length))
            folder = Path(cfg.cache_dir) / "qat" / f"{cfg.model.name}__{task.name}__{recipe.name}__seed{seed}__{rid}"
            with tempfile.TemporaryDirectory(prefix="qexp-qat-") as work:
                meta = qat.train_qat(qmodel, train, tok, hp, seed, device, cfg.progress, Path(work))
            qat.save_qat(qmodel, tok, folder, {**meta, "run_id": rid, "quant": qcfg})
            extra["qat"] = {**meta, "export": str(folder)}
    extra["inference"] = attach(qmodel, _backend(cfg))
    metrics = {}
    with timer.stage("evaluate"):
        for split in task.eval_splits:
            ds = encode(limit(load_split(task, split.name, data_dir), task.limit.eval), tok, int(task.max_length),
                        bool(task.pad_to_max_length))
            logits, labels = predict(qmodel, loader(ds, tok, int(task.finetune.eval_batch_size)), device,
                                     _progress(cfg.progress))
            if not np.isfinite(logits).all():
                raise FloatingPointError(f"non-finite logits on {task.name}/{split.name}")
            metrics[split.name] = compute(list(task.metrics), logits, labels, bool(task.regression))
            metrics[split.name]["n"] = int(len(labels))
    score = task_score({k: v for k, v in metrics.items()}, list(task.score))
    return {"metrics": metrics, "score": score, "finetune": ft_meta, "model_identity": loaded.identity,
            "data_source": source, "sites": site_summary(qmodel), "memory": memory_footprint(qmodel), **extra}


def _backend(cfg) -> str:
    """``inference.backend`` (fake quantization unless a config says otherwise)."""
    return str((cfg.get("inference") or {}).get("backend", "fake"))


def _post_weight_hook(recipe, adaround_data, lkd_task_sampler, default_length, tokenizer, seed, device, progress,
                      extra):
    """The steps that run once weight ranges are fixed and before activations are calibrated (calibrate's
    ``after_weights``): AdaRound (recipe key ``adaround``), then LKD (recipe key ``lkd``); None when neither is on.
    ``adaround_data(n)`` gives a callable of fresh task batches; ``lkd_task_sampler(length)`` a function
    ``(n, generator) -> batch`` over the task's own inputs.  Reports land in ``extra``."""
    steps = []
    if _enabled(recipe, "adaround"):
        acfg = AdaRoundConfig.from_config(recipe.adaround)
        batches = adaround_data(acfg.num_samples)

        def adaround(model):
            extra["adaround"] = {"config": dict(recipe.adaround),
                                 "layers": apply_adaround(model, batches, acfg, seed, progress)}

        steps.append(adaround)
    if _enabled(recipe, "lkd"):
        lcfg = LKDConfig.from_config(recipe.lkd)  # bad options fail before any work
        length = int(lcfg.seq_length or default_length)

        def lkd(model):
            if lcfg.data == "task":
                sampler = lkd_task_sampler(length)
            elif lcfg.data == "random":
                sampler = random_token_sampler(len(tokenizer), length, device)
            else:
                ids = perplexity.tokenize(tokenizer, _text(lcfg.text_file))
                sampler = window_sampler(ids, length, device)
            g_train, g_eval = torch.Generator().manual_seed(seed + 2), torch.Generator().manual_seed(seed + 3)

            def batches():
                while True:
                    yield sampler(lcfg.batch_size, g_train)

            held_out = [sampler(lcfg.batch_size, g_eval) for _ in range(lcfg.eval_batches)]
            t0 = time.perf_counter()
            blocks = model.blocks
            report = apply_lkd(model, blocks, batches, held_out, lcfg, seed, progress)
            extra["lkd"] = {"config": {k: v for k, v in dict(recipe.lkd).items()}, "seq_length": length,
                            "seconds": round(time.perf_counter() - t0, 2), "blocks": report}

        steps.append(lkd)
    if not steps:
        return None

    def hook(model):
        for step in steps:
            step(model)

    return hook


def _errors(qmodel, batches) -> dict:
    """ZeroQuant's relative error (Table G.10) of every quantized site, on the first calibration batch."""
    if not any(q.spec.enabled for q in quantizers(qmodel)):
        return {}
    return {"relative_error": quantization_errors(qmodel, next(iter(batches())))}


def _text(source: str) -> str:
    """A TEXT_SOURCES name (``pydoc_topics``) or the path of a UTF-8 text file."""
    if source in text_outliers.TEXT_SOURCES.names():
        return text_outliers.TEXT_SOURCES.get(source)()
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"text {source!r} is neither a file nor a known text source; valid sources: "
                                f"{text_outliers.TEXT_SOURCES.names()} or a file path")
    return path.read_text(encoding="utf-8")


def run_label_free(cfg, qcfg, device, timer, progress, rid) -> dict:
    task, seed = cfg.task, int(cfg.seed)
    if _qat_on(cfg.recipe):
        raise ValueError(f"recipe {cfg.recipe.name!r} trains (QAT) and needs labels, but task {task.name!r} is "
                         f"label-free; valid: the GLUE tasks (`qexp ls tasks`)")
    with timer.stage("load"):
        set_seed(seed)
        loaded = load_model(cfg.model, num_labels=None, seed=seed)
        qmodel = QuantEncoder(loaded.model).to(device).eval()
        configure(qmodel, qcfg)
        cal_ids, eval_ids = text_outliers.split_windows(loaded.tokenizer, task)
    cal = cfg.calibration
    with timer.stage("calibrate"):
        g = torch.Generator().manual_seed(seed)
        n = int(cal.batch_size) * int(cal.num_batches)

        def batches():
            order = torch.randint(len(cal_ids), (n,), generator=g.manual_seed(seed))
            for i in range(0, n, int(cal.batch_size)):
                yield {"input_ids": cal_ids[order[i:i + int(cal.batch_size)]].to(device)}

        def adaround_data(n: int):  # n calibration windows, another draw than calibration's
            data = cal_ids[torch.randint(len(cal_ids), (n,), generator=torch.Generator().manual_seed(seed + 1))]
            return lambda: ({"input_ids": data[i:i + 64].to(device)} for i in range(0, len(data), 64))

        def lkd_task_sampler(length: int):  # the calibration windows (their own length)
            return lambda n, g: {"input_ids": cal_ids[torch.randint(len(cal_ids), (n,), generator=g)].to(device)}

        extra = {}
        hook = _post_weight_hook(cfg.recipe, adaround_data, lkd_task_sampler, int(task.max_length),
                                 loaded.tokenizer, seed, device, cfg.progress, extra)
        calibrate(qmodel, batches, int(cal.num_batches), progress=cfg.progress, after_weights=hook)
        extra.update(_errors(qmodel, batches))
    extra["inference"] = attach(qmodel, _backend(cfg))
    with timer.stage("evaluate"):
        metrics = text_outliers.evaluate(qmodel, eval_ids.to(device), int(task.eval_batch_size), progress)
    return {"metrics": metrics, "score": 100.0 * metrics["final_rel_error"], "model_identity": loaded.identity,
            "data_source": f"text:{task.source}", "sites": site_summary(qmodel), "memory": memory_footprint(qmodel),
            **extra}


def _decoder(cfg, qcfg, seed):
    """Load the task's decoder and wrap it (language-model tasks need a causal LM)."""
    if cfg.model.get("family", "bert") != "decoder":
        raise ValueError(f"task {cfg.task.name!r} ({cfg.task.kind}) needs a decoder model (a causal LM), but model "
                         f"{cfg.model.name!r} is a {cfg.model.get('family', 'bert')} encoder; decoders: "
                         f"tiny_gpt2, smollm2_135m, gpt2, opt_125m, pythia_* (`qexp ls model`)")
    set_seed(seed)
    loaded = load_model(cfg.model, num_labels=None, seed=seed)
    qmodel = quantizable(loaded.model, "decoder")
    configure(qmodel, qcfg)
    return loaded, qmodel


def _max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return None


def _calibrate_lm(cfg, qmodel, cal_ids, tokenizer, device, extra) -> int:
    """Static calibration (and AdaRound/LKD) on windows of ``calibration.seq_length`` tokens at random offsets of the
    calibration text; returns the window length."""
    cal, seed = cfg.calibration, int(cfg.seed)
    length = int(cal.get("seq_length") or cfg.task.get("context_length") or 512)
    length = min(length, _max_positions(qmodel.config) or length, cal_ids.shape[1])
    bs, nb = int(cal.batch_size), int(cal.num_batches)

    def batches():
        g = torch.Generator().manual_seed(seed)
        for _ in range(nb):
            yield {"input_ids": perplexity.random_windows(cal_ids, bs, length, g).to(device)}

    def adaround_data(n: int):
        data = perplexity.random_windows(cal_ids, n, length, torch.Generator().manual_seed(seed + 1))
        return lambda: ({"input_ids": data[i:i + 8].to(device)} for i in range(0, n, 8))

    def lkd_task_sampler(n_tokens: int):  # windows of the calibration text
        return window_sampler(cal_ids, min(n_tokens, cal_ids.shape[1]), device)

    hook = _post_weight_hook(cfg.recipe, adaround_data, lkd_task_sampler, length, tokenizer, seed, device,
                             cfg.progress, extra)
    calibrate(qmodel, batches, nb, progress=cfg.progress, after_weights=hook)
    extra.update(_errors(qmodel, batches))
    return length


def _prepare_lm(cfg, qcfg, device, timer, calibration_text):
    """The shared start of the language-model task kinds: refuse QAT, load and wrap the decoder, then calibrate (with
    AdaRound/LKD) on ``calibration_text(task)``.  Returns (loaded, qmodel, extra, calibration window length)."""
    task, seed = cfg.task, int(cfg.seed)
    if _qat_on(cfg.recipe):
        raise ValueError(f"recipe {cfg.recipe.name!r} trains (QAT) on labelled GLUE data; task {task.name!r} is a "
                         f"{task.kind} task; valid: the GLUE tasks")
    with timer.stage("load"):
        loaded, qmodel = _decoder(cfg, qcfg, seed)
        qmodel = qmodel.to(device).eval()
        cal_ids = perplexity.tokenize(loaded.tokenizer, calibration_text(task))
    extra = {}
    with timer.stage("calibrate"):
        length = _calibrate_lm(cfg, qmodel, cal_ids, loaded.tokenizer, device, extra)
    extra["inference"] = attach(qmodel, _backend(cfg))
    return loaded, qmodel, extra, length


def _lm_record(loaded, qmodel, extra, metrics, score, source) -> dict:
    return {"metrics": metrics, "score": score, "model_identity": loaded.identity, "data_source": source,
            "sites": site_summary(qmodel), "memory": memory_footprint(qmodel), **extra}


def run_perplexity(cfg, qcfg, device, timer, progress, rid) -> dict:
    task = cfg.task
    loaded, qmodel, extra, cal_length = _prepare_lm(cfg, qcfg, device, timer,
                                                    lambda t: perplexity.load_text(t, "calibration"))
    context = min(int(task.context_length), _max_positions(qmodel.config) or int(task.context_length))
    with timer.stage("evaluate"):
        eval_ids = perplexity.tokenize(loaded.tokenizer, perplexity.load_text(task, "eval"))
        m = perplexity.evaluate(qmodel, eval_ids, context, task.get("stride"), device, task.limit.get("windows"),
                                progress)
    m.update(context_length=context, calibration_seq_length=cal_length)
    source = f"files:{task.data_dir}" if task.get("data_dir") else f"hub:{task.hub.path}/{task.hub.get('name')}"
    return _lm_record(loaded, qmodel, extra, {"test": m}, m["perplexity"], source)


def run_lm_eval(cfg, qcfg, device, timer, progress, rid) -> dict:
    from .tasks import zeroshot

    task = cfg.task
    loaded, qmodel, extra, _ = _prepare_lm(cfg, qcfg, device, timer, lambda t: _text(t.calibration_source))
    with timer.stage("evaluate"):
        metrics = zeroshot.evaluate(qmodel.hf_model, loaded.tokenizer, task, device, bool(cfg.progress))
    source = f"lm_eval:{','.join(task.tasks)}" + (f"@{task.data_dir}" if task.get("data_dir") else "")
    return _lm_record(loaded, qmodel, extra, metrics, zeroshot.score(metrics, task), source)


KINDS = {"glue": run_glue, "label_free": run_label_free, "perplexity": run_perplexity, "lm_eval": run_lm_eval}


def absolute_paths(cfg: DictConfig, cwd: Path) -> None:
    """Results, cache, data and model paths made absolute (they enter run ids and fine-tuning cache keys)."""
    cfg.results_dir = _abs(cfg.results_dir, cwd)
    cfg.cache_dir = _abs(cfg.cache_dir, cwd)
    if cfg.task.get("data_dir"):
        cfg.task.data_dir = _abs(cfg.task.data_dir, cwd)
    if cfg.model.get("path"):
        cfg.model.path = _abs(cfg.model.path, cwd)
    for key in ("calibration_source",):  # a text file path (names of built-in texts stay as they are)
        value = cfg.task.get(key)
        if value and value not in text_outliers.TEXT_SOURCES.names():
            cfg.task[key] = _abs(value, cwd)
    lkd = cfg.recipe.get("lkd") if cfg.get("recipe") is not None else None
    if lkd is not None and lkd.get("text_file") and lkd.text_file not in text_outliers.TEXT_SOURCES.names():
        lkd.text_file = _abs(lkd.text_file, cwd)


def run(cfg: DictConfig, overrides: list[str] | None = None, cwd: Path | None = None) -> dict:
    cwd = Path(cwd or Path.cwd())
    if cfg.get("recipe") is None:
        OmegaConf.set_struct(cfg, False)
        cfg.recipe = FP32
        OmegaConf.set_struct(cfg, True)
    absolute_paths(cfg, cwd)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    path = records.record_path(Path(cfg.results_dir), resolved)
    if path.exists() and not cfg.force:
        log.info("skip: a record for this config and seed exists: %s (force=true re-runs it)", path)
        return {"skipped": True, "path": str(path)}
    if cfg.task.kind not in KINDS:
        raise ValueError(f"unknown task kind {cfg.task.kind!r}; valid: {sorted(KINDS)}")
    if _backend(cfg) not in BACKENDS:
        raise ValueError(f"unknown inference.backend {_backend(cfg)!r}; valid: {list(BACKENDS)}")
    qcfg = quant_config(resolved["recipe"], effective_calibration(cfg))
    device = pick_device(str(cfg.device))
    timer = Timer()
    started, git = records.now(), records.git_state()  # the code that runs, before anything can change it
    rid = records.run_id(resolved)
    with timer.stage("total"):
        result = KINDS[cfg.task.kind](cfg, qcfg, device, timer, _progress(bool(cfg.progress)), rid)
    record = {
        "schema": records.SCHEMA, "run_id": rid, "started": started, "finished": records.now(),
        "model": cfg.model.name, "task": cfg.task.name, "task_version": cfg.task.version,
        "recipe": cfg.recipe.name, "seed": int(cfg.seed), **result,
        "config": resolved, "overrides": list(overrides or []), "git": git,
        "versions": records.versions(), "device": records.device_info(device), "timings": timer.stages,
    }
    records.write_atomic(path, record)
    log.info("%s / %s / %s / seed %s: score %.2f -> %s", cfg.model.name, cfg.task.name, cfg.recipe.name, cfg.seed,
             record["score"], path)
    return record
