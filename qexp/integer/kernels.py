"""The CuPy RawKernels of ``kernels/`` (INT8 GEMM with fused dequantization, per-token quantize), for torch tensors.

One lazy loader compiles ``kernels/*.cu`` with ``cupy.RawModule`` (NVRTC; the templates are instantiated through
``name_expressions``) the first time a kernel is needed.  Tensors cross to CuPy through DLPack (zero copy) and kernels
launch on torch's current stream.  ``kernels_available()`` says whether this machine can run them (CuPy importable, a
CUDA device of compute capability >= 8.0: ``mma.sync.m16n8k32`` on s8 is an sm_80 instruction); ``require()`` raises an
error that says why not.

Tile configurations (``TileConfig``) are template parameters; ``choose_config`` times each one that fits the device's
shared memory on the actual shape with CUDA events and caches the winner per (M, N, K, output dtype, epilogue,
device) in memory and in ``$QEXP_CACHE_DIR/gemm_tuning.json`` (default ``~/.cache/qexp``).
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

KERNEL_DIR = Path(os.environ.get("QEXP_KERNEL_DIR", Path(__file__).resolve().parents[2] / "kernels"))
SOURCES = ("int8_gemm.cu", "quantize.cu")
MIN_CAPABILITY = (8, 0)
K_ALIGN = 16
QUANT_THREADS = 256
OUT_TYPES = {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}
IN_TYPES = OUT_TYPES


class KernelError(RuntimeError):
    pass


@dataclass(frozen=True)
class TileConfig:
    bm: int
    bn: int
    wm: int
    wn: int
    stages: int

    @property
    def threads(self) -> int:
        return (self.bm // self.wm) * (self.bn // self.wn) * 32

    @property
    def smem_bytes(self) -> int:
        return self.stages * (self.bm + self.bn) * (64 + 16)  # BK = 64 bytes, rows padded by 16 (kernels/int8_gemm.cu)

    def name(self, out: str, gelu: bool) -> str:
        return (f"qexp::int8_gemm_mma<{self.bm}, {self.bn}, {self.wm}, {self.wn}, {self.stages}, {out}, "
                f"{'true' if gelu else 'false'}>")


# Large tiles for large M; narrower ones for BERT-sized N (768) and small M, where 128 x 128 tiles leave SMs idle.
CONFIGS = (
    TileConfig(128, 128, 64, 64, 3),
    TileConfig(128, 128, 64, 64, 4),
    TileConfig(128, 256, 64, 64, 3),
    TileConfig(256, 128, 64, 64, 3),
    TileConfig(128, 64, 64, 32, 4),
    TileConfig(64, 128, 32, 64, 4),
    TileConfig(64, 64, 32, 32, 4),
)
DEFAULT_CONFIG = CONFIGS[0]


def _why_unavailable() -> str | None:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed (pip install cupy-cuda12x or cupy-cuda13x, matching your CUDA)"
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    cap = torch.cuda.get_device_capability()
    if cap < MIN_CAPABILITY:
        return (f"the GPU has compute capability {cap[0]}.{cap[1]}; the INT8 mma.sync m16n8k32 kernels need "
                f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Ampere, Ada, Hopper)")
    missing = [s for s in SOURCES if not (KERNEL_DIR / s).is_file()]
    if missing:
        return f"kernel sources {missing} not found in {KERNEL_DIR} (set QEXP_KERNEL_DIR)"
    return None


def kernels_available() -> bool:
    return _why_unavailable() is None


def require() -> None:
    why = _why_unavailable()
    if why is not None:
        raise KernelError(f"the CuPy INT8 kernels cannot run here: {why}")


def _include_options() -> tuple[str, ...]:
    """NVRTC needs cuda_fp16.h / cuda_bf16.h: the toolkit's include directory (CUDA_PATH, or CuPy's guess)."""
    import cupy

    dirs = []
    for root in (os.environ.get("CUDA_PATH"), cupy.cuda.get_cuda_path(), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_fp16.h").is_file():
            dirs.append(str(Path(root) / "include"))
            break
    return tuple(f"-I{d}" for d in dirs)


def _gemm_names() -> list[str]:
    names = [c.name(out, g) for c in CONFIGS for out in OUT_TYPES.values() for g in (False, True)]
    names += [f"qexp::int8_gemm_dp4a<{out}, {'true' if g else 'false'}>" for out in OUT_TYPES.values()
              for g in (False, True)]
    return names


def _quant_names() -> list[str]:
    return ([f"qexp::token_minmax<{t}, {QUANT_THREADS}>" for t in IN_TYPES.values()]
            + [f"qexp::quantize_per_token<{t}, {QUANT_THREADS}>" for t in IN_TYPES.values()]
            + [f"qexp::quantize_static<{t}>" for t in IN_TYPES.values()])


@cache
def _modules():
    import cupy

    require()
    opts = ("-std=c++17", *_include_options())
    try:
        gemm = cupy.RawModule(code=(KERNEL_DIR / "int8_gemm.cu").read_text(), options=opts,
                              name_expressions=_gemm_names())
        quant = cupy.RawModule(code=(KERNEL_DIR / "quantize.cu").read_text(), options=opts,
                               name_expressions=_quant_names())
        gemm.compile()
        quant.compile()
    except cupy.cuda.compiler.CompileException as e:
        raise KernelError(f"NVRTC could not compile kernels/ ({e}); options {opts}") from None
    return gemm, quant


_fn_lock = threading.Lock()
_fns: dict[str, object] = {}


def _function(module_index: int, name: str):
    with _fn_lock:
        if name not in _fns:
            f = _modules()[module_index].get_function(name)
            _fns[name] = f
        return _fns[name]


def _cp(t: torch.Tensor):
    import cupy

    return cupy.from_dlpack(t.detach())


def _stream():
    import cupy

    return cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)


def _null():
    import numpy

    return numpy.uint64(0)


def _i32(v: int):
    import numpy

    return numpy.int32(v)


def _check(t: torch.Tensor, name: str, dtype: torch.dtype, shape: tuple | None = None) -> None:
    if not t.is_cuda:
        raise KernelError(f"{name} must be a CUDA tensor, got device {t.device}")
    if t.dtype != dtype:
        raise KernelError(f"{name} must be {dtype}, got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise KernelError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if not t.is_contiguous():
        raise KernelError(f"{name} must be contiguous")


def gemm(a: torch.Tensor, b: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor, *, zx: torch.Tensor | None = None,
         wsum: torch.Tensor | None = None, bias: torch.Tensor | None = None, gelu: bool = False,
         out_dtype: torch.dtype = torch.float16, impl: str = "mma", config: TileConfig | None = None,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """y = epilogue(a @ b^T): a (M, Kp) int8, b (N, Kp) int8 (an nn.Linear weight's layout), Kp % 16 == 0 (zero-padded),
    sx (M,) fp32, sw (N,) fp32, optional zx (M,) int32 with wsum (N,) int32, bias (N,) fp32, GELU; y (M, N)
    ``out_dtype``.  ``impl``: "mma" (tensor cores; ``config`` or the autotuned choice) or "dp4a" (the simple one)."""
    require()
    if out_dtype not in OUT_TYPES:
        raise KernelError(f"unsupported output dtype {out_dtype}; valid: {list(OUT_TYPES)}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise KernelError(f"shapes {tuple(a.shape)} and {tuple(b.shape)} do not make an (M, K) x (N, K) GEMM")
    m, kp = a.shape
    n = b.shape[0]
    if kp % K_ALIGN:
        raise KernelError(f"K = {kp} is not a multiple of {K_ALIGN}: zero-pad both operands (qexp.integer.backends.padded)")
    if m == 0 or n == 0:
        return torch.empty(m, n, dtype=out_dtype, device=a.device)
    _check(a, "a", torch.int8)
    _check(b, "b", torch.int8)
    _check(sx, "sx", torch.float32, (m,))
    _check(sw, "sw", torch.float32, (n,))
    if (zx is None) != (wsum is None):
        raise KernelError("zx and wsum go together (the zero-point fold acc - zx * wsum)")
    if zx is not None:
        _check(zx, "zx", torch.int32, (m,))
        _check(wsum, "wsum", torch.int32, (n,))
    if bias is not None:
        bias = bias.float().contiguous()
        _check(bias, "bias", torch.float32, (n,))
    if out is None:
        out = torch.empty(m, n, dtype=out_dtype, device=a.device)
    else:
        _check(out, "out", out_dtype, (m, n))
    ptrs = [_cp(t) if t is not None else _null() for t in (a, b, out, sx, zx, sw, wsum, bias)]
    dims = [_i32(m), _i32(n), _i32(kp), _i32(kp), _i32(kp)]
    otype = OUT_TYPES[out_dtype]
    with _stream():
        if impl == "dp4a":
            f = _function(0, f"qexp::int8_gemm_dp4a<{otype}, {'true' if gelu else 'false'}>")
            f(((n + 15) // 16, (m + 15) // 16), (16, 16), (*ptrs, *dims))
        elif impl == "mma":
            cfg = config or choose_config(m, n, kp, out_dtype, gelu)
            f = _function(0, cfg.name(otype, gelu))
            f.max_dynamic_shared_size_bytes = cfg.smem_bytes
            f(((n + cfg.bn - 1) // cfg.bn, (m + cfg.bm - 1) // cfg.bm), (cfg.threads,), (*ptrs, *dims),
              shared_mem=cfg.smem_bytes)
        else:
            raise KernelError(f"unknown GEMM implementation {impl!r}; valid: mma, dp4a")
    return out


def quantize_per_token(x: torch.Tensor, bits: int = 8, ldq: int | None = None):
    """x (M, K) float -> (codes (M, ldq) int8, scale (M,) fp32, zero point (M,) int32): ZeroQuant's token-wise
    symmetric quantization with qexp.quant.affine's grid rules (kernels/quantize.cu)."""
    require()
    x = _float_input(x)
    m, k = x.shape
    ldq = ldq or -(-k // K_ALIGN) * K_ALIGN
    if not 2 <= bits <= 8 or ldq < k:
        raise KernelError(f"bits must be 2-8 (got {bits}) and ldq >= K (got {ldq} < {k})")
    dev = x.device
    lo, hi = torch.empty(m, device=dev), torch.empty(m, device=dev)
    neg = torch.zeros(1, dtype=torch.int32, device=dev)
    q = torch.empty(m, ldq, dtype=torch.int8, device=dev)
    sx, zx = torch.empty(m, device=dev), torch.empty(m, dtype=torch.int32, device=dev)
    if m == 0:
        return q, sx, zx
    t = IN_TYPES[x.dtype]
    with _stream():
        _function(1, f"qexp::token_minmax<{t}, {QUANT_THREADS}>")(
            (m,), (QUANT_THREADS,), (_cp(x), _i32(m), _i32(k), _i32(k), _cp(lo), _cp(hi), _cp(neg)))
        _function(1, f"qexp::quantize_per_token<{t}, {QUANT_THREADS}>")(
            (m,), (QUANT_THREADS,), (_cp(x), _i32(m), _i32(k), _i32(k), _i32(ldq), _i32(bits), _cp(lo), _cp(hi),
                                     _cp(neg), _cp(q), _cp(sx), _cp(zx)))
    return q, sx, zx


def quantize_static(x: torch.Tensor, scale: float, zero_point: float, q_min: int, q_max: int, shift: int,
                    ldq: int | None = None) -> torch.Tensor:
    """x (M, K) float -> codes (M, ldq) int8 with one calibrated scale and zero point, stored minus ``shift``."""
    import numpy

    require()
    x = _float_input(x)
    m, k = x.shape
    ldq = ldq or -(-k // K_ALIGN) * K_ALIGN
    q = torch.empty(m, ldq, dtype=torch.int8, device=x.device)
    total = m * ldq
    if total:
        with _stream():
            _function(1, f"qexp::quantize_static<{IN_TYPES[x.dtype]}>")(
                ((total + 255) // 256,), (256,),
                (_cp(x), _i32(m), _i32(k), _i32(k), _i32(ldq), numpy.float32(scale), numpy.float32(zero_point),
                 numpy.float32(q_min), numpy.float32(q_max), _i32(shift), _cp(q)))
    return q


def _float_input(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2:
        raise KernelError(f"expected a 2-D (tokens, features) input, got shape {tuple(x.shape)}")
    if x.dtype not in IN_TYPES:
        raise KernelError(f"unsupported input dtype {x.dtype}; valid: {list(IN_TYPES)}")
    if not x.is_cuda:
        raise KernelError(f"the input must be a CUDA tensor, got device {x.device}")
    return x.contiguous()


# -- the autotuner ------------------------------------------------------------------------------------------------
_tuned: dict[str, TileConfig] = {}


def _cache_file() -> Path:
    return Path(os.environ.get("QEXP_CACHE_DIR", Path.home() / ".cache" / "qexp")) / "gemm_tuning.json"


def _key(m: int, n: int, k: int, out_dtype, gelu: bool) -> str:
    return f"{torch.cuda.get_device_name()}|{m}x{n}x{k}|{OUT_TYPES[out_dtype]}|gelu={gelu}"


def _load_cache() -> None:
    f = _cache_file()
    if f.is_file() and not _tuned:
        try:
            _tuned.update({k: TileConfig(**v) for k, v in json.loads(f.read_text()).items()})
        except (ValueError, TypeError):
            pass  # a damaged cache is re-tuned, never trusted


def _save_cache() -> None:
    f = _cache_file()
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({k: asdict(v) for k, v in _tuned.items()}, indent=1))
    os.replace(tmp, f)


def fitting_configs() -> list[TileConfig]:
    limit = torch.cuda.get_device_properties(torch.cuda.current_device()).shared_memory_per_block_optin
    return [c for c in CONFIGS if c.smem_bytes <= limit]


def choose_config(m: int, n: int, k: int, out_dtype=torch.float16, gelu: bool = False, repeats: int = 10) -> TileConfig:
    """The fastest fitting tile configuration for this shape, timed once with CUDA events and cached."""
    _load_cache()
    key = _key(m, n, k, out_dtype, gelu)
    if key in _tuned:
        return _tuned[key]
    dev = torch.device("cuda")
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device=dev)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev)
    sx, sw = torch.ones(m, device=dev), torch.ones(n, device=dev)
    out = torch.empty(m, n, dtype=out_dtype, device=dev)
    best, best_t = DEFAULT_CONFIG, float("inf")
    for cfg in fitting_configs():
        for _ in range(2):
            gemm(a, b, sx, sw, gelu=gelu, out_dtype=out_dtype, config=cfg, out=out)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            gemm(a, b, sx, sw, gelu=gelu, out_dtype=out_dtype, config=cfg, out=out)
        end.record()
        end.synchronize()
        t = start.elapsed_time(end)
        if t < best_t:
            best, best_t = cfg, t
    _tuned[key] = best
    try:
        _save_cache()
    except OSError:
        pass  # a read-only home: the choice stays cached in memory
    return best
