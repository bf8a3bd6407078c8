"""``qexp bench gemm`` and ``qexp bench layer``: speed of the INT8 path (ZeroQuant Table G.8 layout).

gemm: for each shape (the paper's BERT and GPT rows: M = bsz x seq, a square d x d weight; plus BERT-base FFN
shapes and large squares) and each implementation available on the device:
  fp16_cublas   torch.nn.functional.linear in fp16 (cuBLAS)
  int8_cublaslt torch._int_mm (cuBLASLt INT8 -> INT32, no dequantization; its rules: M > 16, K and N % 8 == 0)
  ours          qexp.integer.kernels.gemm: INT8 mma.sync GEMM with the fused dequantization epilogue, fp16 output (autotuned)
  ours+quant    our per-token quantize kernel (fp16 -> int8 + scales) followed by the GEMM: the real cost of a layer
  dp4a          the CUDA-core reference kernel (correctness baseline)
  fp32_cpu / int_reference_cpu   on a machine without CUDA (plumbing only: these are not the paper's numbers)
Timing: CUDA events around groups of ``inner`` launches queued behind a GPU sleep (so host launch overhead is not
timed), after warm-up; the median over ``repeats`` groups, divided by ``inner``.  Inputs rotate over enough buffer sets
to exceed the L2 cache, so no launch reads operands the previous one left in cache.

layer: a BERT-base encoder layer (hidden 768, 12 heads, FFN 3072, random weights) at batch x seq tokens: FP16 versus
ZeroQuant W8A8 (48 groups, token-wise inputs) on the cupy_int8 backend, the block timed with CUDA events.

Both write a record (``results/bench/<kind>__<device>__<time>.json``, atomic) with the device, versions and git
commit; ``make tables`` renders the newest GEMM record per device as ``zeroquant_tableG8.csv``.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F

from ..common.timing import time_cpu_interleaved
from .record import BenchError

PEAK_INT8_TOPS = {"H100 SXM": 1979.0, "H100 PCIe": 1513.0, "H200": 1979.0, "A100": 624.0}  # dense, datasheets
PEAK_FP16_TFLOPS = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H200": 989.0, "A100": 312.0}

# ZeroQuant Table G.8: (group, bsz, seq, d) with an (M = bsz * seq, K = d) x (d, N = d) GEMM.
G8_ROWS = ([("BERT", b, s, d) for b in (1, 64) for s in (128, 256) for d in (768, 1024)]
           + [("GPT", 1, s, d) for s in (1, 8, 16) for d in (4096, 6144)])
EXTRA_ROWS = [("BERT-base FFN", 64, 128, (768, 3072)), ("BERT-base FFN", 64, 128, (3072, 768)),
              ("large", 1, 4096, 4096), ("large", 1, 8192, 8192)]
FFN_ROWS = EXTRA_ROWS[:2]  # --shapes ffn: the BERT-base FFN linears alone (on a CPU "large" takes minutes a call)
SMALL_ROWS = [("BERT", 1, 16, 64), ("BERT", 2, 16, 96)]  # --shapes small: a CPU smoke of the harness





def shapes(which: str) -> list[dict]:
    rows = {"g8": G8_ROWS, "extra": EXTRA_ROWS, "all": G8_ROWS + EXTRA_ROWS, "ffn": FFN_ROWS,
            "small": SMALL_ROWS}.get(which)
    if rows is None:
        raise BenchError(f"unknown shape set {which!r}; valid: g8, extra, all, ffn, small")
    out = []
    for group, bsz, seq, d in rows:
        k, n = d if isinstance(d, tuple) else (d, d)
        out.append({"group": group, "bsz": bsz, "seq": seq, "dim": d if isinstance(d, int) else f"{k}->{n}",
                    "M": bsz * seq, "K": k, "N": n})
    return out


def peak(device_name: str, table: dict) -> float | None:
    for key, v in table.items():
        if all(part in device_name for part in key.split()):
            return v
    return None


# -- timing -------------------------------------------------------------------------------------------------------
def time_cuda(fn, repeats: int, inner: int, warmup: int = 3) -> float:
    """Median milliseconds per call of fn(i) (call i uses buffer set i modulo their count), device time, host
    overhead hidden."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    times = []
    for r in range(repeats):
        torch.cuda._sleep(2_000_000)  # about a millisecond: the host queues the group before the GPU reaches it
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for j in range(inner):
            fn(r * inner + j)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def _n_sets(bytes_per_set: int, cuda: bool) -> int:
    if not cuda:
        return 2
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2 ** 20)
    return max(2, min(64, math.ceil(3 * l2 / max(bytes_per_set, 1))))


def _implementations(cuda: bool, wanted: list[str] | None):
    if cuda:
        from ..integer.kernels import kernels_available

        names = ["fp16_cublas", "int8_cublaslt"]
        if kernels_available():
            names += ["ours", "ours+quant", "dp4a"]
    else:
        from ..integer.cpu_int8 import available

        names = ["fp32_cpu", *(["cpu_int8", "cpu_int8+quant", "cpu_int8_single", "cpu_int8_split"] if available()
                               else []),
                 "int_reference_cpu"]
    if wanted:
        bad = [w for w in wanted if w not in names]
        if bad:
            raise BenchError(f"implementation(s) {bad} are not available here; valid on this machine: {names}")
        names = wanted
    return names


def _gemm_case(impl: str, m: int, k: int, n: int, dev: str):
    """(fn(i), bytes per buffer set, skip reason or None) for one implementation and shape."""
    from ..integer.operands import Int8Activation, Int8Weight, padded, reference_gemm

    g = torch.Generator(device=dev).manual_seed(0)
    if impl in ("fp16_cublas", "fp32_cpu"):
        dt = torch.float16 if impl == "fp16_cublas" else torch.float32
        make = lambda: (torch.randn(m, k, device=dev, generator=g, dtype=dt),
                        torch.randn(n, k, device=dev, generator=g, dtype=dt))
        per = (m * k + n * k + m * n) * (2 if dt == torch.float16 else 4)
        sets = [make() for _ in range(_n_sets(per, dev == "cuda"))]
        return (lambda i: F.linear(*sets[i % len(sets)])), per, None
    if impl == "int8_cublaslt":
        if m <= 16 or k % 8 or n % 8:
            return None, 0, "torch._int_mm needs M > 16 and K, N multiples of 8"
        per = m * k + n * k + 4 * m * n
        sets = [(torch.randint(-128, 128, (m, k), dtype=torch.int8, device=dev, generator=g),
                 torch.randint(-128, 128, (k, n), dtype=torch.int8, device=dev, generator=g))
                for _ in range(_n_sets(per, True))]
        return (lambda i: torch._int_mm(*sets[i % len(sets)])), per, None
    if impl in ("cpu_int8", "cpu_int8+quant", "cpu_int8_single", "cpu_int8_split"):
        return _cpu_int8_case(impl, m, k, n, g)
    kp = padded(k)
    per = m * kp + n * kp + 2 * m * n
    sets = []
    for _ in range(_n_sets(per, dev == "cuda")):
        a = torch.randint(-128, 128, (m, kp), dtype=torch.int8, device=dev, generator=g)
        b = torch.randint(-128, 128, (n, kp), dtype=torch.int8, device=dev, generator=g)
        x = torch.randn(m, k, device=dev, generator=g, dtype=torch.float16) if impl == "ours+quant" else None
        sets.append((a, b, torch.rand(m, device=dev) * 1e-3, torch.rand(n, device=dev) * 1e-3, x))
    if impl == "int_reference_cpu":
        z = torch.zeros(m, dtype=torch.int32)
        return (lambda i: reference_gemm(Int8Activation(sets[i % len(sets)][0], sets[i % len(sets)][2], z),
                                         Int8Weight(sets[i % len(sets)][1], sets[i % len(sets)][3], z[:n], k))), per, None
    from ..integer import kernels

    if impl == "dp4a":
        if m * n * k > 2 ** 34:
            return None, 0, "the dp4a reference is too slow at this size"
        return (lambda i: kernels.gemm(*sets[i % len(sets)][:4], impl="dp4a")), per, None
    cfg = kernels.choose_config(m, n, kp, torch.float16, False)
    if impl == "ours":
        return (lambda i: kernels.gemm(*sets[i % len(sets)][:4], config=cfg)), per, None

    def quant_gemm(i):
        _, b, _, sw, x = sets[i % len(sets)]
        q, sx, _zx = kernels.quantize_per_token(x, 8, ldq=kp)
        return kernels.gemm(q, b, sx, sw, config=cfg)
    return quant_gemm, per + 2 * m * k, None


def _cpu_int8_case(impl: str, m: int, k: int, n: int, g):
    """oneDNN INT8: the weight packed once (as an attached layer holds it); ``+quant`` also quantizes the fp32 input
    per token (ZeroQuant's activations) before the GEMM, as inference does.  ``cpu_int8_single`` times one plain u8*s8
    GEMM whatever the CPU: the speed of the INT8 instructions, and on a CPU whose probe saturates (no VNNI) NOT the
    exact result -- it shows what exactness costs there (the backend itself never runs it on such a CPU);
    ``cpu_int8_split`` times the two-GEMM exact path whatever the CPU (what a CPU without VNNI pays)."""
    from ..quant.granularity import PerToken
    from ..quant.quantizer import Quantizer, QuantSpec
    from ..integer.operands import Int8Activation, Int8Weight
    from ..integer.cpu_int8 import CpuInt8Backend

    backend = CpuInt8Backend()
    if impl in ("cpu_int8_single", "cpu_int8_split"):
        backend.split = impl == "cpu_int8_split"
    q = Quantizer("bench.input", QuantSpec(bits=8, symmetric=True, granularity=PerToken()))
    q.set_state("fixed")
    per = m * k + n * k + 4 * m * n
    sets = []
    for _ in range(_n_sets(per, False)):
        codes = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        w = backend.prepare(Int8Weight(codes, torch.rand(n) * 1e-3, codes.to(torch.int32).sum(1), k), "cpu")
        a = Int8Activation(torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g), torch.rand(m) * 1e-3,
                           torch.zeros(m, dtype=torch.int32))
        sets.append((a, w, torch.randn(m, k, generator=g) if impl == "cpu_int8+quant" else None))
    if impl in ("cpu_int8", "cpu_int8_single", "cpu_int8_split"):
        return (lambda i: backend.gemm(sets[i % len(sets)][0], sets[i % len(sets)][1], None, torch.float32)), per, None
    return (lambda i: backend.gemm(backend.quantize(q, sets[i % len(sets)][2]), sets[i % len(sets)][1], None,
                                   torch.float32)), per + 4 * m * k, None


def bench_gemm(shape_set: str = "all", impls: list[str] | None = None, repeats: int = 50, inner: int = 10,
               device: str = "auto", progress: bool = True) -> dict:
    cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not cuda:
        raise BenchError(f"device={device!r} but CUDA is not available; valid here: cpu")
    dev = "cuda" if cuda else "cpu"
    names = _implementations(cuda, impls)
    gpu = torch.cuda.get_device_name() if cuda else None
    rows = []
    for s in shapes(shape_set):
        cases = {impl: _gemm_case(impl, s["M"], s["K"], s["N"], dev) for impl in names}
        if not cuda:  # CPU: the implementations take turns, so a drift of the machine's speed hits them all alike
            cpu_ms = time_cpu_interleaved({i: fn for i, (fn, _, skip) in cases.items() if not skip}, repeats, inner)
        for impl in names:
            fn, _, skip = cases[impl]
            row = {**s, "impl": impl}
            if skip:
                row.update(time_ms=None, tflops=None, note=skip)
            else:
                ms = time_cuda(fn, repeats, inner) if cuda else cpu_ms[impl]
                flops = 2.0 * s["M"] * s["K"] * s["N"]
                row.update(time_ms=ms, tflops=flops / (ms * 1e-3) / 1e12)
                if gpu and impl != "fp16_cublas":
                    p = peak(gpu, PEAK_INT8_TOPS)
                    row["pct_int8_peak"] = 100 * row["tflops"] / p if p else None
                elif gpu:
                    p = peak(gpu, PEAK_FP16_TFLOPS)
                    row["pct_fp16_peak"] = 100 * row["tflops"] / p if p else None
            rows.append(row)
            if progress:
                t = "skip" if row["time_ms"] is None else f"{row['time_ms']:.4f} ms {row['tflops']:.1f} TFLOPS"
                print(f"{s['group']:>13} bsz {s['bsz']:>3} seq {s['seq']:>5} dim {s['dim']!s:>9}  {impl:<17} {t}",
                      flush=True)
    out = {"kind": "gemm", "shape_set": shape_set, "repeats": repeats, "inner": inner, "rows": rows,
           "threads": torch.get_num_threads()}
    if not cuda and any(r["impl"].startswith("cpu_int8") for r in rows):
        from ..integer.cpu_int8 import CpuInt8Backend

        out["cpu_int8"] = CpuInt8Backend().describe()
    return out


def bench_layer(bsz: int = 64, seq: int = 128, repeats: int = 30, progress: bool = True, device: str = "cuda",
                backend: str = "cupy_int8") -> dict:
    """A BERT-base encoder layer: float versus ZeroQuant W8A8 on an integer backend, the block timed by forward hooks
    (CUDA events on a GPU, where the model runs in FP16; wall clock and FP32 on the CPU, plumbing only)."""
    from contextlib import nullcontext

    from omegaconf import OmegaConf
    from transformers import BertConfig, BertModel

    from ..config.compose import compose
    from ..config.quant import quant_config
    from ..models.families import quantizable
    from ..quant.analysis import full_precision
    from ..quant.calibrate import calibrate
    from ..quant.sites import configure
    from ..integer.backends import attach

    cuda = device.startswith("cuda")
    if backend == "cupy_int8":
        from ..integer.kernels import require

        require()
    if cuda and not torch.cuda.is_available():
        raise BenchError(f"device={device!r} but CUDA is not available; valid here: cpu")
    torch.manual_seed(0)
    hf = BertModel(BertConfig(num_hidden_layers=1), add_pooling_layer=False)  # BERT-base sizes, random weights
    qmodel = quantizable(hf, "bert").to(device).eval()
    if cuda:
        qmodel = qmodel.half()
    cfg = compose(["+recipe=zq_w8a8", "recipe.groups=48"])
    configure(qmodel, quant_config(OmegaConf.to_container(cfg.recipe, resolve=True), cfg.calibration))
    ids = torch.randint(1000, 20000, (bsz, seq), device=device)
    calibrate(qmodel, lambda: iter([{"input_ids": ids}]), 1, progress=False)
    block = qmodel.blocks[0]
    float_name = "fp16" if cuda else "fp32"
    timings, summary = {}, {}
    for name in (float_name, backend):
        if name == float_name:
            attach(qmodel, "fake")
            ctx = full_precision(qmodel)
        else:
            summary = attach(qmodel, backend)
            ctx = nullcontext()
        starts, ends = [], []
        stamp = _event if cuda else time.perf_counter
        pre = block.register_forward_pre_hook(lambda *_, s=starts, f=stamp: s.append(f()))
        post = block.register_forward_hook(lambda *_, e=ends, f=stamp: e.append(f()))
        with ctx, torch.no_grad():
            for _ in range(repeats + 3):
                if cuda:
                    torch.cuda._sleep(20_000_000)  # ~10 ms: the host queues the forward before the GPU gets there
                qmodel(input_ids=ids)
        if cuda:
            torch.cuda.synchronize()
        pre.remove()
        post.remove()
        ms = [s.elapsed_time(e) if cuda else (e - s) * 1e3 for s, e in zip(starts[3:], ends[3:])]
        timings[name] = statistics.median(ms)
        if progress:
            print(f"BERT-base layer, {bsz} x {seq} tokens, {name}: {timings[name]:.4f} ms", flush=True)
    attach(qmodel, "fake")
    return {"kind": "layer", "model": "bert-base layer (random weights)", "recipe": "zq_w8a8 (48 groups)", "bsz": bsz,
            "seq": seq, "repeats": repeats, "backend": backend, "integer_linears": summary.get("integer_linears"),
            "inference": summary, "threads": torch.get_num_threads(), "time_ms": timings,
            "speedup": timings[float_name] / timings[backend]}


def _event():
    e = torch.cuda.Event(enable_timing=True)
    e.record()
    return e
