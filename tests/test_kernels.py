"""The CUDA kernels of kernels/.

On every machine with nvcc (CI included): both sources compile for sm_80 and sm_90, the GEMM's PTX carries the tensor-
core instruction (mma.sync m16n8k32 on s8), ldmatrix and cp.async, so a kernel that silently fell back to scalar code
fails here, and ptxas reports no register spills.

On a CUDA GPU (marker ``gpu``; `make test-gpu`): the CuPy kernels against the torch integer reference
(qexp.integer.backends.reference_gemm / activation_operand) on random and ragged shapes, with every output buffer poisoned
(NaN / sentinel codes) before each launch, so an element the kernel forgot to write fails the comparison."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from qexp.integer.kernels import CONFIGS, KERNEL_DIR, OUT_TYPES

NVCC = shutil.which("nvcc")
ARCHS = ("sm_80", "sm_90")
# sm_80 in the default suite; sm_90 compiles the same source to the same instructions (no Hopper-only code) and takes
# another minute of nvcc on 2 cores: `make test-slow` checks it
ARCH_PARAMS = [pytest.param("sm_80"), pytest.param("sm_90", marks=pytest.mark.slow)]


def _nvcc(source: str, arch: str, what: str, out: Path, keep: Path | None = None) -> str:
    """nvcc's ptxas log; with ``keep`` the intermediate PTX of a cubin build stays there (one compile, both checked)."""
    cmd = [NVCC, "-std=c++17", "-DQEXP_NVCC_CHECK", f"-arch={arch}", f"-{what}", "-o", str(out),
           str(KERNEL_DIR / source), "-Xptxas", "-v", *(["--keep", "--keep-dir", str(keep)] if keep else [])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr}"
    return r.stderr


@pytest.mark.slow   # ~12 s of nvcc per run; `make check-kernels` and `make test-slow` run it
@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_gemm_compiles_to_tensor_core_code(arch, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    log = _nvcc("int8_gemm.cu", arch, "cubin", tmp_path / "g.cubin", keep=keep)
    (ptx_file,) = keep.glob("*.ptx")  # the PTX ptxas compiled into that cubin
    ptx = ptx_file.read_text()
    entries = re.findall(r"\.entry\s+(\S+)\(", ptx)
    mma_entries = [e for e in entries if "int8_gemm_mma" in e]
    assert len(mma_entries) >= 6, entries  # the instantiated tile configurations
    # every mma kernel body holds the s8 tensor-core instruction, ldmatrix and 16-byte cp.async
    bodies = re.split(r"\.entry\s+", ptx)[1:]
    for body in bodies:
        if body.startswith(tuple(mma_entries)):
            assert "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32" in body
            assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in body
            assert re.search(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 16", body)
            assert "cp.async.wait_group" in body
    assert any("int8_gemm_dp4a" in e for e in entries)
    assert "dp4a.s32.s32" in ptx
    assert "spill stores" in log and not re.search(r"[1-9]\d* bytes spill stores", log), log


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ARCHS)
def test_quantize_kernels_compile(arch, tmp_path):
    _nvcc("quantize.cu", arch, "cubin", tmp_path / "q.cubin")
    _nvcc("quantize.cu", arch, "ptx", tmp_path / "q.ptx")
    ptx = (tmp_path / "q.ptx").read_text()
    assert "cvt.rni" in ptx  # round-half-to-even, as torch.round
    assert "div.rn.f32" in ptx  # IEEE division, as torch


def test_every_offered_configuration_is_compiled_by_the_ci_check():
    """qexp/kernels.py offers CONFIGS to NVRTC; the nvcc check instantiates them explicitly, so keep them in sync."""
    src = (KERNEL_DIR / "int8_gemm.cu").read_text()
    inst = {tuple(int(v) for v in m) for m in re.findall(r"QEXP_INST\((\d+), (\d+), (\d+), (\d+), (\d+),", src)}
    assert {(c.bm, c.bn, c.wm, c.wn, c.stages) for c in CONFIGS} <= inst


# -- GPU ------------------------------------------------------------------------------------------------------------
SHAPES = [(1, 8, 16), (17, 40, 48), (129, 72, 784), (300, 257, 1040), (64 * 128, 768, 3072), (4096, 4096, 4096)]


def _operands(m, n, kp, seed, dev="cuda"):
    g = torch.Generator(device=dev).manual_seed(seed)
    a = torch.randint(-128, 128, (m, kp), dtype=torch.int8, device=dev, generator=g)
    b = torch.randint(-128, 128, (n, kp), dtype=torch.int8, device=dev, generator=g)
    sx = torch.rand(m, device=dev, generator=g) * 1e-2 + 1e-4
    sw = torch.rand(n, device=dev, generator=g) * 1e-2 + 1e-4
    zx = torch.randint(-128, 128, (m,), dtype=torch.int32, device=dev, generator=g)
    wsum = b.int().sum(1).int()
    bias = torch.randn(n, device=dev, generator=g)
    return a, b, sx, sw, zx, wsum, bias


def _reference(a, b, sx, sw, zx, wsum, bias, gelu, out_dtype):
    from qexp.integer.backends import Int8Activation, Int8Weight, reference_gemm

    zp = zx if zx is not None else torch.zeros_like(sx, dtype=torch.int32)
    return reference_gemm(Int8Activation(a, sx, zp), Int8Weight(b, sw, wsum if wsum is not None else b.int().sum(1),
                                                                a.shape[1]), bias, gelu, out_dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", ["mma", "dp4a"])
@pytest.mark.parametrize("out_dtype", list(OUT_TYPES))
def test_gemm_matches_the_reference(shape, impl, out_dtype):
    from qexp.integer.kernels import gemm

    m, n, kp = shape
    if impl == "dp4a" and m * n * kp > 2 ** 31:
        pytest.skip("the dp4a reference is slow on the largest shape")
    a, b, sx, sw, zx, wsum, bias = _operands(m, n, kp, seed=m + n)
    for zero_point, use_bias, gelu in [(False, False, False), (True, True, False), (True, True, True)]:
        args = dict(zx=zx if zero_point else None, wsum=wsum if zero_point else None,
                    bias=bias if use_bias else None, gelu=gelu)
        out = torch.full((m, n), float("nan"), dtype=out_dtype, device="cuda")  # poisoned
        got = gemm(a, b, sx, sw, out_dtype=out_dtype, impl=impl, out=out, **args)
        torch.cuda.synchronize()
        ref = _reference(a, b, sx, sw, args["zx"], args["wsum"], args["bias"], gelu, out_dtype)
        assert torch.isfinite(got).all()
        if gelu:  # erff (CUDA) and torch.erf differ by an ulp or two
            torch.testing.assert_close(got.float(), ref.float(), rtol=1e-5 if out_dtype == torch.float32 else 1e-2,
                                       atol=1e-6)
        else:  # explicitly rounded epilogue in the reference's order: bit-identical
            assert torch.equal(got, ref), (got.float() - ref.float()).abs().max()


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_every_tile_configuration_is_exact_on_a_ragged_shape(cfg):
    from qexp.integer.kernels import fitting_configs, gemm

    if cfg not in fitting_configs():
        pytest.skip("does not fit this GPU's shared memory")
    m, n, kp = 333, 201, 720  # no dimension is a multiple of any tile
    a, b, sx, sw, zx, wsum, bias = _operands(m, n, kp, seed=7)
    out = torch.full((m, n), float("nan"), device="cuda")
    got = gemm(a, b, sx, sw, zx=zx, wsum=wsum, bias=bias, out_dtype=torch.float32, config=cfg, out=out)
    assert torch.equal(got, _reference(a, b, sx, sw, zx, wsum, bias, False, torch.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 5), (33, 768), (257, 3072)])
@pytest.mark.parametrize("nonnegative", [False, True])
def test_per_token_quantize_kernel_matches_the_reference(dtype, shape, nonnegative):
    from qexp.integer.backends import activation_operand, padded
    from qexp.integer.kernels import quantize_per_token
    from qexp.quant.granularity import PerToken
    from qexp.quant.quantizer import Quantizer, QuantSpec

    g = torch.Generator(device="cuda").manual_seed(shape[0])
    x = (torch.randn(*shape, device="cuda", generator=g) * 3).to(dtype)
    x[:, 0] = 40.0
    if nonnegative:
        x = x.abs()
    q = Quantizer("x.input", QuantSpec(bits=8, symmetric=True, granularity=PerToken()))
    q.set_state("fixed")
    ref = activation_operand(q, x)
    codes, sx, zx = quantize_per_token(x, 8, ldq=padded(shape[1]))
    assert torch.equal(codes, ref.codes) and torch.equal(sx, ref.scale) and torch.equal(zx, ref.zero_point)


@pytest.mark.gpu
def test_static_quantize_kernel_matches_the_reference():
    from qexp.integer.backends import activation_operand, padded
    from qexp.integer.kernels import quantize_static
    from qexp.quant.quantizer import Quantizer, QuantSpec

    x = torch.randn(70, 100, device="cuda") * 2 + 0.5
    q = Quantizer("x.input", QuantSpec(bits=8, symmetric=False))
    q.estimator.observe(q.slots(x))
    q.compute_encodings()
    q.set_state("fixed")
    ref = activation_operand(q, x)
    p = q.qparams_for(x[:1])
    codes = quantize_static(x, float(p.scale), float(p.zero_point), p.q_min, p.q_max, 128, ldq=padded(100))
    assert torch.equal(codes, ref.codes)


@pytest.mark.gpu
def test_cupy_backend_runs_a_zeroquant_decoder_like_the_reference(tmp_path, wikitext_like):
    from tests.helpers import run_cfg

    common = ["+recipe=zq_w8a8", "recipe.groups=16", "model=tiny_gpt2", "task=wikitext2", "device=cuda",
              f"task.data_dir={wikitext_like}"]
    ref = run_cfg(tmp_path / "a", *common, "inference.backend=torch_int")
    got = run_cfg(tmp_path / "b", *common, "inference.backend=cupy_int8")
    assert got["inference"]["backend"] == "cupy_int8" and got["inference"]["integer_linears"] > 0
    assert abs(got["score"] - ref["score"]) <= 1e-4 * ref["score"]
