"""`qexp bench`: the timing harness and its records on the CPU (plumbing; speed is only measured on a GPU, never by a
test), the Table G.8 rendering, clear errors; on a GPU (marker gpu) one real run of every implementation."""
import json

import pandas as pd
import pytest
import torch

from qexp.bench.gemm import BenchError, bench_gemm, shapes
from qexp.common.timing import time_cpu
from qexp.report.gemm import device_label, table_g8
from tests.helpers import cli


def test_g8_shapes_are_the_papers_rows():
    rows = shapes("g8")
    assert len(rows) == 14 and rows[0] == {"group": "BERT", "bsz": 1, "seq": 128, "dim": 768, "M": 128, "K": 768,
                                           "N": 768}
    paper = pd.read_csv("qexp/report/reference/zeroquant_tableG8.csv")
    assert [(r["group"], r["bsz"], r["seq"], r["dim"]) for r in rows] == list(
        paper[["group", "bsz", "seq", "dim"]].itertuples(index=False, name=None))
    # the paper's TFLOPS are 2 * M * d * d / time: the square-GEMM reading of "Matrix dim" (hand check of its rows)
    tflops = 2 * paper.bsz * paper.seq * paper.dim ** 2 / (paper.fp16_cublas_ms * 1e-3) / 1e12
    assert ((tflops - paper.fp16_cublas_tflops).abs() / paper.fp16_cublas_tflops < 1e-3).all()
    with pytest.raises(BenchError, match="unknown shape set 'huge'; valid: g8, extra, all, ffn, small"):
        shapes("huge")


def test_cpu_timer_rotates_buffer_sets():
    calls = []
    ms = time_cpu(lambda i: calls.append(i), repeats=5, inner=3)
    assert calls == [0, *range(15)] and ms >= 0  # one warm-up call, then 5 groups of 3 consecutive set indices


def test_cpu_timer_interleaves_the_implementations():
    from qexp.common.timing import time_cpu_interleaved

    calls = []
    ms = time_cpu_interleaved({"a": lambda i: calls.append(("a", i)), "b": lambda i: calls.append(("b", i))}, 2, 2)
    assert calls == [("a", 0), ("b", 0), ("a", 0), ("a", 1), ("b", 0), ("b", 1), ("a", 2), ("a", 3), ("b", 2),
                     ("b", 3)] and set(ms) == {"a", "b"}


def test_bench_gemm_cli_writes_a_record_and_make_tables_renders_it(tmp_path, capsys):
    out = tmp_path / "bench"
    code, _, err = cli(capsys, "bench", "gemm", "--shapes", "small", "--device", "cpu", "--repeats", "2", "--inner",
                       "1", "--out", str(out))
    assert code == 0, err
    (rec_file,) = out.glob("gemm__cpu__*.json")
    rec = json.loads(rec_file.read_text())
    assert rec["git"]["commit"] and rec["versions"]["torch"] and rec["device"]["type"] == "cpu"
    rows = rec["bench"]["rows"]
    assert {r["impl"] for r in rows} >= {"fp32_cpu", "int_reference_cpu"}
    assert all(r["time_ms"] > 0 for r in rows) and rec["bench"]["threads"] >= 1
    from qexp.integer.cpu_int8 import available

    if available():
        assert {r["impl"] for r in rows} >= {"cpu_int8", "cpu_int8+quant", "cpu_int8_single", "cpu_int8_split"}
        assert rec["bench"]["cpu_int8"]["path"] and rec["bench"]["cpu_int8"]["isa"]  # which oneDNN path ran
    r = rows[0]
    assert r["tflops"] == pytest.approx(2 * r["M"] * r["K"] * r["N"] / (r["time_ms"] * 1e-3) / 1e12)
    t = table_g8(out)
    assert len(t) == 14 + 2 and t.paper_A100_int8_cutlass_ms.notna().sum() == 14
    assert rec["device"]["cpu"]["logical_cpus"] >= 1 and "isa_flags" in rec["device"]["cpu"]
    measured = t[t.device == device_label(rec)]
    assert t.device.dropna().str.endswith(f"({rec['bench']['threads']} threads)").all()
    assert len(measured) == 2 and measured.fp32_cpu_ms.notna().all()
    if "cpu_int8_ms" in measured:
        assert (measured.cpu_int8_speedup_vs_fp32 == measured.fp32_cpu_ms / measured.cpu_int8_ms).all()


def test_cpu_rows_name_the_cpu_so_two_machines_never_share_a_row():
    """A VNNI CPU runs the exact INT8 GEMM once, one without VNNI twice: their timings must be different rows, also
    for records written before the CPU was recorded (then the INT8 backend's ISA and path name it)."""
    old = {"device": {"type": "cpu", "gpu": None},
           "bench": {"threads": 2, "cpu_int8": {"isa": "AVX2", "path": "split-u7 (two exact GEMMs)"}}}
    new = {"device": {"type": "cpu", "gpu": None, "cpu": {"model": "x", "isa_flags": ["avx2", "avx512f", "avx512_vnni"]}},
           "bench": {"threads": 1, "cpu_int8": {"isa": "AVX512", "path": "single"}}}
    bare = {"device": {"type": "cpu", "gpu": None}, "bench": {"threads": 1}}
    gpu = {"device": {"type": "cuda", "gpu": "NVIDIA H200"}, "bench": {}}
    assert device_label(old) == "cpu AVX2, no VNNI (2 threads)"
    assert device_label(new) == "cpu AVX512, VNNI (1 threads)"
    assert device_label(bare) == "cpu (1 threads)" and device_label(gpu) == "NVIDIA H200"


def test_table_g8_layout_with_a_gpu_record(tmp_path):
    """Rendering only (the numbers below are made up for the layout; real ones come from `qexp bench gemm`)."""
    rows = []
    for impl, ms in (("fp16_cublas", 0.05), ("int8_cublaslt", 0.04), ("ours", 0.025), ("ours+quant", 0.03)):
        rows.append({"group": "BERT", "bsz": 64, "seq": 128, "dim": 768, "M": 8192, "K": 768, "N": 768, "impl": impl,
                     "time_ms": ms, "tflops": 2 * 8192 * 768 * 768 / (ms * 1e-3) / 1e12, "pct_int8_peak": 20.0})
    rec = {"bench": {"rows": rows}, "device": {"type": "cuda", "gpu": "NVIDIA H100 80GB HBM3"},
           "finished": "2026-01-01T00:00:00+00:00", "git": {"commit": "abc"}}
    (tmp_path / "gemm__x.json").write_text(json.dumps(rec))
    t = table_g8(tmp_path)
    row = t[(t.bsz == 64) & (t.seq == 128) & (t.dim == "768")].iloc[0]
    assert row.device == "NVIDIA H100 80GB HBM3" and row.ours_speedup_vs_fp16 == pytest.approx(2.0)
    assert row["ours+quant_speedup_vs_fp16"] == pytest.approx(0.05 / 0.03) and row.paper_A100_int8_cutlass_ms == 0.035627


def test_bench_layer_plumbing_on_the_cpu():
    """The layer benchmark's model, recipe and hooks on the CPU with the torch integer backend (no speed claim)."""
    from qexp.bench.gemm import bench_layer

    res = bench_layer(2, 16, repeats=1, progress=False, device="cpu", backend="torch_int")
    assert res["integer_linears"] == 6  # Q, K, V, attention output, FFN in, FFN out
    assert res["time_ms"]["fp32"] > 0 and res["time_ms"]["torch_int"] > 0


def test_bench_layer_on_cpu_int8():
    from qexp.bench.gemm import bench_layer
    from qexp.integer.cpu_int8 import available

    if not available():
        pytest.skip("this torch has no oneDNN INT8 ops")
    res = bench_layer(2, 16, repeats=1, progress=False, device="cpu", backend="cpu_int8")
    assert res["integer_linears"] == 6 and res["time_ms"]["cpu_int8"] > 0


def test_bench_errors_are_clear(tmp_path, capsys):
    import re

    from qexp.integer.cpu_int8 import available

    valid = ["fp32_cpu", *(["cpu_int8", "cpu_int8+quant", "cpu_int8_single", "cpu_int8_split"] if available() else []),
             "int_reference_cpu"]
    with pytest.raises(BenchError, match=re.escape(f"implementation(s) ['ours'] are not available here; valid on this "
                                                   f"machine: {valid}")):
        bench_gemm("small", ["ours"], device="cpu", progress=False)
    if not torch.cuda.is_available():
        code, _, err = cli(capsys, "bench", "layer", "--out", str(tmp_path))
        assert code != 0 and "the CuPy INT8 kernels cannot run here" in err


def test_bench_pretrain_plumbing(tmp_path, capsys):
    """`qexp bench pretrain`: every variant of each preset timed, the vanilla ratio 1, a record (tiny shapes: the
    plumbing only; the measured ratios are in the README)."""
    from tests.helpers import cli

    code, out, _ = cli(capsys, "bench", "pretrain", "--model", "opt_cpu", "--batch", "2", "--seq", "16",
                       "--repeats", "1", "--out", str(tmp_path))
    assert code == 0 and "gated_linear" in out and "clipped_alpha" in out
    rec = json.loads(next(tmp_path.glob("pretrain_step__*.json")).read_text())
    rows = {r["attention"]: r for r in rec["bench"]["rows"]}
    assert set(rows) == {"vanilla", "clipped_alpha", "gated_linear"} and rows["vanilla"]["vs_vanilla"] == 1.0
    code, _, err = cli(capsys, "bench", "pretrain", "--model", "bert_base")
    assert code != 0 and "--model 'bert_base' has no variant set; valid: bert_cpu, opt_cpu" in err


@pytest.mark.gpu
def test_bench_gemm_and_layer_on_a_gpu(tmp_path):
    from qexp.bench.gemm import bench_layer

    res = bench_gemm("g8", None, repeats=5, inner=2, progress=False)
    impls = {r["impl"] for r in res["rows"]}
    assert {"fp16_cublas", "int8_cublaslt", "ours", "ours+quant"} <= impls
    assert all(r["time_ms"] > 0 for r in res["rows"] if r["time_ms"] is not None)
    layer = bench_layer(8, 128, repeats=3, progress=False)
    assert layer["time_ms"]["fp16"] > 0 and layer["time_ms"]["int8_cupy"] > 0


def test_bench_fakequant_reports_ratios_side_by_side(tmp_path):
    """The benchmark's shape (ratios in one run; the numbers themselves come from `qexp bench fakequant`)."""
    from qexp.bench.fakequant import bench_fakequant

    res = bench_fakequant("tiny_bert", "w8a8_ptq", batch=2, seq=8, repeats=1, inner=1, site_elements=4096,
                          compiled=False)   # the compiled row: test_affine (slow) and the committed records
    rows = {r["forward"]: r for r in res["rows"]}
    assert set(rows) == {"hf_fp32", "qexp_fp32", "qexp_w8a8", "qexp_w8a8_autograd_path"}
    assert rows["qexp_fp32"]["vs_qexp_fp32"] == 1.0
    assert 0 < res["w8a8_logit_rel_error"] < 1 and res["site"]["elements"] == 4096
    train = {r["step"]: r for r in res["train_rows"]}
    assert set(train) == {"hf_fp32_train", "qexp_fp32_train", "qexp_w8a8_train", "qexp_w8a8_train_chain"}
    assert train["hf_fp32_train"]["vs_hf_fp32"] == 1.0
    from qexp.quant import affine

    assert affine.FUSED   # the chain's row switched it back


def test_a_later_record_of_other_shapes_adds_rows_and_hides_none(tmp_path):
    """Per device, each (shape, implementation) comes from its newest record: a later ``--shapes ffn`` run adds the
    FFN rows without hiding the earlier G.8 rows; a later run of the same shape replaces its timings."""
    def rec(finished, rows, commit):
        return {"schema": 1, "finished": finished, "git": {"commit": commit}, "device": {"type": "cpu", "gpu": None},
                "bench": {"kind": "gemm", "threads": 1, "rows": rows}}

    def row(group, bsz, seq, dim, ms):
        return {"group": group, "bsz": bsz, "seq": seq, "dim": dim, "impl": "fp32_cpu", "time_ms": ms, "tflops": 1.0}

    (tmp_path / "gemm__cpu__a.json").write_text(json.dumps(rec("2026-01-01T00:00:00+00:00",
                                                               [row("BERT", 1, 128, 768, 5.0),
                                                                row("BERT", 1, 128, 1024, 7.0)], "old")))
    (tmp_path / "gemm__cpu__b.json").write_text(json.dumps(rec("2026-01-02T00:00:00+00:00",
                                                               [row("BERT", 1, 128, 768, 4.0),
                                                                row("BERT-base FFN", 64, 128, "768->3072", 9.0)],
                                                               "new")))
    t = table_g8(tmp_path)
    ours = t[t.device == "cpu (1 threads)"].set_index(["group", "dim"])
    assert ours.loc[("BERT", "768"), "fp32_cpu_ms"] == 4.0 and ours.loc[("BERT", "768"), "git_commit"] == "new"
    assert ours.loc[("BERT", "1024"), "fp32_cpu_ms"] == 7.0 and ours.loc[("BERT", "1024"), "git_commit"] == "old"
    assert ours.loc[("BERT-base FFN", "768->3072"), "fp32_cpu_ms"] == 9.0


def test_gate_bench_runs_side_by_side_and_writes_a_record(tmp_path, minilm_dir, capsys):
    """Issue 28: the fine-tuning gates' step cost on the pretrained MiniLM-L6 (plumbing only: the measured ratio is in
    results/bench and the closing notes)."""
    from .helpers import cli

    code, out, _ = cli(capsys, "bench", "gate", "--batch", "2", "--seq", "8", "--repeats", "2", "--out", str(tmp_path))
    assert code == 0 and "gated (fine-tuning form)" in out
    rec = json.loads(next(tmp_path.glob("gate_step__cpu__*.json")).read_text())
    assert [r["attention"] for r in rec["bench"]["rows"]] == ["vanilla", "gated (fine-tuning form)"]
    assert rec["bench"]["model"] == "minilm_l6"
    code, _, err = cli(capsys, "bench", "gate", "--model", "bert_base", "--out", str(tmp_path))
    assert code == 2 and "invalid choice: 'bert_base'" in err and "smollm2_135m" in err
