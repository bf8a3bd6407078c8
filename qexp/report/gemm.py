"""ZeroQuant Table G.8 (GEMM speed) from ``qexp bench gemm`` records, with the paper's A100 numbers beside ours.

One row per shape and device (the newest GEMM record per device): time (ms) and TFLOPS (TOPS for INT8) per
implementation, our speed-up over FP16 cuBLAS with and without the quantize step, and the fraction of the device's
dense INT8 peak.  The paper's rows (FP16 cuBLAS, INT8 cuBLAS, INT8 CUTLASS on a 40 GB A100, ``paper_*``) stay even
where nothing was measured, so the layout is the paper's."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

REFERENCE = Path(__file__).parent / "reference"
KEYS = ["group", "bsz", "seq", "dim"]
IMPLS = ["fp16_cublas", "int8_cublaslt", "ours", "ours+quant", "dp4a", "fp32_cpu", "cpu_int8", "cpu_int8+quant",
         "cpu_int8_single", "cpu_int8_split", "int_reference_cpu"]


def device_label(rec: dict) -> str:
    """The GPU's name, or ``cpu <ISA>, VNNI|no VNNI (N threads)``: CPU timings on different CPUs or thread counts
    are different rows (a VNNI CPU runs the exact INT8 GEMM once, one without it twice).  Records written before the
    CPU was recorded name it through the INT8 backend's ISA and path."""
    gpu = rec["device"].get("gpu")
    if gpu:
        return gpu
    threads = rec["bench"].get("threads")
    flags = (rec["device"].get("cpu") or {}).get("isa_flags")
    backend = rec["bench"].get("cpu_int8") or {}
    if flags is not None:
        vnni = any("vnni" in f for f in flags)
    elif backend.get("path"):  # an older record: the backend's probe says it (the split path means no VNNI)
        vnni = not str(backend["path"]).startswith("split")
    else:
        vnni = None
    isa = backend.get("isa") or next((n for f, n in (("avx512f", "AVX512"), ("avx2", "AVX2")) if f in (flags or [])),
                                     None)
    parts = [p for p in (isa, {True: "VNNI", False: "no VNNI"}.get(vnni)) if p]
    label = rec["device"]["type"] + (" " + ", ".join(parts) if parts else "")
    return f"{label} ({threads} threads)" if threads else label


def newest_rows(bench_dir: Path) -> dict[str, pd.DataFrame]:
    """Per device label, every (shape, implementation) timing from its newest GEMM record that has it: a later run of
    one shape set (``--shapes ffn``) adds rows and never hides another set's."""
    frames = []
    for f in sorted(Path(bench_dir).glob("gemm__*.json")) if Path(bench_dir).exists() else []:
        rec = json.loads(f.read_text())
        rows = pd.DataFrame(rec["bench"]["rows"])
        if rows.empty:
            continue
        rows["device"], rows["finished"] = device_label(rec), rec["finished"]
        rows["git_commit"] = (rec.get("git") or {}).get("commit")
        frames.append(rows)
    if not frames:
        return {}
    every = pd.concat(frames, ignore_index=True)
    every["dim"] = every["dim"].astype(str)
    every = every.sort_values("finished", kind="stable").drop_duplicates(["device", *KEYS, "impl"], keep="last")
    return {dev: g for dev, g in every.groupby("device", sort=False)}


def table_g8(bench_dir: Path) -> pd.DataFrame:
    paper = pd.read_csv(REFERENCE / "zeroquant_tableG8.csv", dtype={"dim": str})
    paper = paper.rename(columns={c: f"paper_A100_{c}" for c in paper.columns if c not in KEYS})
    frames = []
    for device, rows in newest_rows(bench_dir).items():
        wide = rows.pivot_table(index=KEYS, columns="impl", values=["time_ms", "tflops"], aggfunc="first")
        wide.columns = [f"{impl}_{'ms' if v == 'time_ms' else 'tflops'}" for v, impl in wide.columns]
        wide = wide.reset_index()
        measured = [f"{i}_{u}" for i in IMPLS for u in ("ms", "tflops") if f"{i}_{u}" in wide]  # the paper's order
        wide = wide[KEYS + measured]
        if "pct_int8_peak" in rows:
            peak = rows[rows.impl == "ours"].set_index(KEYS)["pct_int8_peak"].rename("ours_pct_int8_peak")
            wide = wide.join(peak, on=KEYS)
        for impl in ("ours", "ours+quant", "int8_cublaslt"):
            if f"{impl}_ms" in wide and "fp16_cublas_ms" in wide:
                wide[f"{impl}_speedup_vs_fp16"] = wide["fp16_cublas_ms"] / wide[f"{impl}_ms"]
        for impl in ("cpu_int8", "cpu_int8+quant", "cpu_int8_single", "cpu_int8_split"):
            if f"{impl}_ms" in wide and "fp32_cpu_ms" in wide:
                wide[f"{impl}_speedup_vs_fp32"] = wide["fp32_cpu_ms"] / wide[f"{impl}_ms"]
        wide.insert(0, "device", device)
        wide = wide.join(rows.sort_values("finished").groupby(KEYS)["git_commit"].last(), on=KEYS)
        frames.append(wide)
    ours = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["device", *KEYS])
    ours["bsz"] = ours["bsz"].astype(int) if len(ours) else ours["bsz"]
    ours["seq"] = ours["seq"].astype(int) if len(ours) else ours["seq"]
    out = paper.merge(ours, on=KEYS, how="outer")
    order = {k: i for i, k in enumerate(["BERT", "GPT", "BERT-base FFN", "large"])}
    def key(c):
        if c.name == "group":
            return c.map(order)
        if c.name == "dim":  # "768" or "768->3072": numerically by the first number
            return c.map(lambda d: int(str(d).split("-")[0]))
        return c
    out = out.sort_values(KEYS, key=key, kind="stable")
    lead = ["group", "bsz", "seq", "dim", "device"]
    return out[lead + [c for c in out.columns if c not in lead]].reset_index(drop=True)
