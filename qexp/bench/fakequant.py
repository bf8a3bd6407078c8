"""``qexp bench fakequant``: what fake quantization costs at inference, measured side by side in one run.

1. The model: a W8A8 fake-quantized forward (recipe ``w8a8_ptq``, ranges calibrated on two batches) -- by the in-place
   inference path and by the autograd-style path every forward took before it -- against qexp's own FP32 forward (the
   same wrapper, every quantizer off) and HF's forward, on 16 x 128 tokens of MiniLM-L6 (offline), the
   three taking turns round by round (:func:`qexp.common.timing.time_cpu_interleaved`), under ``torch.no_grad``.
   Issue 14's target: W8A8 at most 1.3x the FP32 forward; issue 31's: 1.2x.  Also timed: the same W8A8 forward with
   the inference chain compiled into one loop (``QEXP_COMPILED_FAKEQUANT=1``; its logits must equal the eager ones bit
   for bit, recorded as ``compiled_logits_equal``).
   And the training path (forward + backward of the logits' sum, the path QAT, LKD, AdaRound and quantized training
   take): FP32 and W8A8 through the fused straight-through quantizer, and W8A8 through the autograd chain it replaced
   (``qexp.quant.affine.FUSED = False``: the same values and gradients), against HF's FP32 step (issue 31: <= 1.6x).
2. One site: a fixed-range 8-bit asymmetric per-tensor quantizer on a 3M-element tensor against torch's fused
   ``torch.fake_quantize_per_tensor_affine`` with the same scale and zero point (torch's kernel multiplies by
   1/scale, so its codes may differ from ours at rounding ties: it is a speed reference, not a drop-in).
"""
from __future__ import annotations

import torch

from ..common.timing import time_cpu_interleaved


def _models(model_name: str, recipe: str, batch: int, seq: int):
    from omegaconf import OmegaConf

    from ..config.compose import compose
    from ..config.quant import effective_calibration, quant_config
    from ..models.families import family_of
    from ..models.loading import load_model
    from ..quant.calibrate import calibrate
    from ..quant.sites import configure

    cfg = compose([f"model={model_name}", "task=rte", f"+recipe={recipe}", "calibration.num_batches=2"])
    torch.manual_seed(0)   # the new classification head
    hf = load_model(cfg.model, num_labels=2, seed=0)
    hf.model.eval()
    wrapper = family_of(cfg.model).wrap(hf.model).eval()
    configure(wrapper, quant_config(OmegaConf.to_container(cfg.recipe, resolve=True), effective_calibration(cfg)))
    g = torch.Generator().manual_seed(0)
    vocab = int(hf.model.config.vocab_size)

    def batch_of():
        ids = torch.randint(min(1000, vocab // 2), vocab, (batch, seq), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    cal = [batch_of() for _ in range(2)]
    calibrate(wrapper, lambda: iter(cal), 2, progress=False)
    return hf.model, wrapper, batch_of()


def _set_quant(wrapper, on: bool, saved: dict) -> None:
    from ..quant.sites import quantizers

    for q in quantizers(wrapper):
        if on:
            q.set_state(saved[q.name])
        else:
            saved.setdefault(q.name, q.state)
            q.state = "off"


def bench_fakequant(model: str = "minilm_l6", recipe: str = "w8a8_ptq", batch: int = 16, seq: int = 128,
                    repeats: int = 15, inner: int = 2, threads: int | None = None, site_elements: int = 3 * 2 ** 20,
                    compiled: bool = True) -> dict:
    from ..quant.quantizer import Quantizer, QuantSpec

    if threads:
        torch.set_num_threads(int(threads))
    hf, wrapper, inputs = _models(model, recipe, batch, seq)
    saved: dict = {}

    @torch.no_grad()
    def hf_fp32(_i):
        hf(**inputs)

    @torch.no_grad()
    def qexp_fp32(_i):
        _set_quant(wrapper, False, saved)
        wrapper(**inputs)

    @torch.no_grad()
    def qexp_w8a8(_i):
        _set_quant(wrapper, True, saved)
        wrapper(**inputs)

    @torch.no_grad()
    def qexp_w8a8_autograd_path(_i):   # the path every forward took before the in-place one (same values)
        _set_quant(wrapper, True, saved)
        Quantizer.fast_inference = False
        try:
            wrapper(**inputs)
        finally:
            Quantizer.fast_inference = True

    from ..quant import affine

    @torch.no_grad()
    def qexp_w8a8_compiled(_i):   # QEXP_COMPILED_FAKEQUANT=1: the inference chain as one compiled loop
        _set_quant(wrapper, True, saved)
        was = affine.COMPILED
        affine.set_compiled(True)
        try:
            wrapper(**inputs)
        finally:
            affine.set_compiled(was)

    _set_quant(wrapper, False, saved)   # remember every quantizer's calibrated state
    _set_quant(wrapper, True, saved)
    with torch.no_grad():
        _set_quant(wrapper, False, saved)
        ref = wrapper(**inputs).logits
        _set_quant(wrapper, True, saved)
        was = affine.COMPILED
        affine.set_compiled(False)
        quant = wrapper(**inputs).logits
        compiled_equal = None
        if compiled:
            affine.set_compiled(True)   # compiles here, before any timing; the same logits bit for bit
            compiled_equal = bool(torch.equal(wrapper(**inputs).logits, quant))
        affine.set_compiled(was)
    forwards = {"hf_fp32": hf_fp32, "qexp_fp32": qexp_fp32, "qexp_w8a8": qexp_w8a8,
                "qexp_w8a8_autograd_path": qexp_w8a8_autograd_path}
    if compiled:
        forwards["qexp_w8a8_compiled"] = qexp_w8a8_compiled
    ms = time_cpu_interleaved(forwards, repeats, inner, warmup=2)

    def train_step(quant: bool, fused: bool, model):
        def step(_i):
            if model is wrapper:
                _set_quant(wrapper, quant, saved)
            affine.FUSED = fused
            try:
                model(**inputs).logits.float().sum().backward()
            finally:
                affine.FUSED = True
            model.zero_grad(set_to_none=True)
        return step

    train = time_cpu_interleaved({"hf_fp32_train": train_step(False, True, hf),
                                  "qexp_fp32_train": train_step(False, True, wrapper),
                                  "qexp_w8a8_train": train_step(True, True, wrapper),
                                  "qexp_w8a8_train_chain": train_step(True, False, wrapper)}, repeats, inner, warmup=2)
    _set_quant(wrapper, True, saved)

    x = torch.randn(site_elements, generator=torch.Generator().manual_seed(1))
    q = Quantizer("bench.site", QuantSpec(bits=8, symmetric=False))
    q.set_state("estimating")
    q(x)
    q.compute_encodings()
    q.set_state("fixed")
    p = q.grid()
    scale, zp = float(p.scale.reshape(-1)[0]), int(p.zero_point.reshape(-1)[0])

    @torch.no_grad()
    def ours(_i):
        q(x)

    @torch.no_grad()
    def ours_autograd_path(_i):
        Quantizer.fast_inference = False
        try:
            q(x)
        finally:
            Quantizer.fast_inference = True

    @torch.no_grad()
    def fused(_i):
        torch.fake_quantize_per_tensor_affine(x, scale, zp, p.q_min, p.q_max)

    site = time_cpu_interleaved({"qexp_quantizer": ours, "qexp_quantizer_autograd_path": ours_autograd_path,
                                 "torch_fused": fused}, repeats, 4, warmup=2)
    with torch.no_grad():
        codes_differ = int((q(x) != torch.fake_quantize_per_tensor_affine(x, scale, zp, p.q_min, p.q_max)).sum())
    return {"kind": "fakequant", "model": model, "recipe": recipe, "batch": batch, "seq": seq, "repeats": repeats,
            "inner": inner, "threads": torch.get_num_threads(),
            "rows": [{"forward": k, "ms": v, "vs_qexp_fp32": v / ms["qexp_fp32"], "vs_hf_fp32": v / ms["hf_fp32"]}
                     for k, v in ms.items()],
            "train_rows": [{"step": k, "ms": v, "vs_qexp_fp32": v / train["qexp_fp32_train"],
                            "vs_hf_fp32": v / train["hf_fp32_train"]} for k, v in train.items()],
            "w8a8_logit_rel_error": float((quant - ref).norm() / ref.norm()),
            "compiled_logits_equal": compiled_equal,
            "site": {"elements": site_elements, "ms": site, "vs_torch_fused": site["qexp_quantizer"] /
                     site["torch_fused"], "values_differing_from_torch_fused": codes_differ}}
