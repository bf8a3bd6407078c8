"""``qexp bench WHAT``: every benchmark of qexp, one module each in this package -- ``gemm`` and ``layer`` (INT8 GEMM
and encoder-layer speed, ZeroQuant Table G.8: :mod:`.gemm`), ``eval`` (integer backends end to end: :mod:`.eval`),
``fakequant``, ``pretrain``, ``qpt``, ``gate``, ``ddp`` and ``memory``; each writes a record (:mod:`.record`)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from .record import BenchError, write_record  # noqa: F401  (BenchError: what `qexp bench` reports as a user error)


def positive(text: str) -> int:
    """An argparse type: an integer >= 1 (issue 27 #11/#15: --repeats 0, --inner 0, --bsz 0, --threads 0 ran and
    crashed or were recorded)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def device_arg(*valid: str):
    def check(text: str) -> str:
        if text in valid or ("cuda" in valid and re.fullmatch(r"cuda:\d+", text)):
            return text
        raise argparse.ArgumentTypeError(f"{text!r} is not a device here; valid: {', '.join(valid)}"
                                         f"{', cuda:N' if 'cuda' in valid else ''}")
    return check


def main(argv: list[str]) -> None:
    if argv[:1] == ["eval"]:   # its own parser: a run's Hydra overrides follow the options
        from .eval import main as eval_main

        return eval_main(argv[1:])
    ap = argparse.ArgumentParser(prog="qexp bench", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gemm", help="GEMM throughput, ZeroQuant Table G.8 layout")
    g.add_argument("--shapes", default="all", help="g8 | extra | all | ffn | small")
    g.add_argument("--impl", action="append", help="repeatable; default: every implementation available here")
    g.add_argument("--repeats", type=positive, default=50)
    g.add_argument("--inner", type=positive, default=10)
    g.add_argument("--device", default="auto", type=device_arg("auto", "cuda", "cpu"), help="auto | cuda | cpu")
    g.add_argument("--out", default="results/bench")
    ly = sub.add_parser("layer", help="BERT-base encoder layer latency, FP16 vs our INT8 path (CUDA)")
    ly.add_argument("--bsz", type=positive, default=64)
    ly.add_argument("--seq", type=positive, default=128)
    ly.add_argument("--repeats", type=positive, default=30)
    ly.add_argument("--device", default="cuda", type=device_arg("cuda", "cpu"), help="cuda | cpu")
    ly.add_argument("--backend", default="cupy_int8", choices=("cupy_int8", "cpu_int8", "torch_int"), help="cupy_int8 (cuda) | cpu_int8 (cpu, oneDNN) | torch_int")
    ly.add_argument("--out", default="results/bench")
    pt = sub.add_parser("pretrain", help="training-step cost of clipped softmax / gated attention vs vanilla (CPU)")
    pt.add_argument("--model", action="append", help="repeatable; default: bert_cpu and opt_cpu")
    pt.add_argument("--batch", type=positive, default=16)
    pt.add_argument("--seq", type=positive, default=128)
    pt.add_argument("--repeats", type=positive, default=12)
    pt.add_argument("--threads", type=positive, default=None)
    pt.add_argument("--out", default="results/bench")
    dd = sub.add_parser("ddp", help="training-step time of 1 process x 1 thread, 1 x N threads, N processes x 1 "
                                    "thread (torchrun, gloo), side by side (CPU)")
    dd.add_argument("--model", default="opt_cpu", choices=("opt_cpu", "bert_cpu", "gpt2_cpu"))
    dd.add_argument("--procs", type=positive, default=2, help="N: processes, and threads of the one-process launch")
    dd.add_argument("--batch", type=positive, default=16, help="the global batch (split across the processes)")
    dd.add_argument("--seq", type=positive, default=128)
    dd.add_argument("--steps", type=positive, default=10, help="timed steps per launch and round")
    dd.add_argument("--warmup", type=positive, default=2)
    dd.add_argument("--rounds", type=positive, default=3)
    dd.add_argument("--out", default="results/bench")
    qp = sub.add_parser("qpt", help="training-step cost of quantized pre-training recipes vs the FP step (CPU)")
    qp.add_argument("--model", default="gpt2_cpu")
    qp.add_argument("--recipe", action="append", help="repeatable; default: qpt_w8a8, qpt_w8a8g8, qpt_m1_8_channel")
    qp.add_argument("--batch", type=positive, default=16)
    qp.add_argument("--seq", type=positive, default=128)
    qp.add_argument("--repeats", type=positive, default=12)
    qp.add_argument("--threads", type=positive, default=None)
    qp.add_argument("--out", default="results/bench")
    me = sub.add_parser("memory", help="training memory by component: measured step vs the analytic model, and "
                                       "the analytic GPT-2 small/medium/large grid (Figures 14/15)")
    me.add_argument("--model", default="gpt2_cpu")
    me.add_argument("--batch", type=positive, default=16)
    me.add_argument("--seq", type=positive, default=128)
    me.add_argument("--device", default="cpu", type=device_arg("cpu", "cuda"), help="cpu | cuda (adds max_memory_allocated)")
    me.add_argument("--out", default="results/bench")
    ga = sub.add_parser("gate", help="training-step cost of the fine-tuning gates on a pretrained model (CPU)")
    ga.add_argument("--model", default="minilm_l6", choices=("minilm_l6", "smollm2_135m"))
    ga.add_argument("--batch", type=positive, default=16)
    ga.add_argument("--seq", type=positive, default=128)
    ga.add_argument("--repeats", type=positive, default=10)
    ga.add_argument("--threads", type=positive, default=None)
    ga.add_argument("--out", default="results/bench")
    fq = sub.add_parser("fakequant", help="W8A8 fake-quantized forward vs the FP32 forward (MiniLM-L6, 16 x 128), "
                                          "and one quantizer vs torch's fused op (CPU)")
    fq.add_argument("--model", default="minilm_l6")
    fq.add_argument("--recipe", default="w8a8_ptq")
    fq.add_argument("--batch", type=positive, default=16)
    fq.add_argument("--seq", type=positive, default=128)
    fq.add_argument("--repeats", type=positive, default=15)
    fq.add_argument("--no-compiled", action="store_true", help="leave out the compiled-chain row (its first call "
                                                                   "compiles for ~20-40 s)")
    fq.add_argument("--threads", type=positive, default=None)
    fq.add_argument("--out", default="results/bench")
    a = ap.parse_args(argv)
    from ..common.outdirs import OutputDirError, writable

    try:
        writable(Path(a.out), "--out")   # before the benchmark runs, not after (issue 27 #15)
    except OutputDirError as e:
        raise BenchError(str(e)) from None
    if a.what == "fakequant":
        from .fakequant import bench_fakequant

        res = bench_fakequant(a.model, a.recipe, a.batch, a.seq, a.repeats, threads=a.threads,
                              compiled=not a.no_compiled)
        for r in res["rows"]:
            print(f"{r['forward']:24s} {r['ms']:8.2f} ms  x{r['vs_qexp_fp32']:.3f} vs qexp fp32  "
                  f"x{r['vs_hf_fp32']:.3f} vs HF fp32")
        for r in res["train_rows"]:
            print(f"{r['step']:24s} {r['ms']:8.2f} ms  x{r['vs_qexp_fp32']:.3f} vs qexp fp32  "
                  f"x{r['vs_hf_fp32']:.3f} vs HF fp32 (forward + backward)")
        s = res["site"]
        print(f"one site, {s['elements']} elements: ours {s['ms']['qexp_quantizer']:.2f} ms (autograd path "
              f"{s['ms']['qexp_quantizer_autograd_path']:.2f} ms), torch fused "
              f"{s['ms']['torch_fused']:.2f} ms (x{s['vs_torch_fused']:.2f}); W8A8 logits rel. error "
              f"{res['w8a8_logit_rel_error']:.4f}")
        print(f"wrote {write_record(res, Path(a.out), 'cpu')}")
        return
    if a.what == "gate":
        from .gate import bench_gate

        res = bench_gate(a.batch, a.seq, a.repeats, threads=a.threads, model=a.model)
        for r in res["rows"]:
            print(f"{r['model']:12s} {r['attention']:26s} {r['ms_per_step']:8.1f} ms/step  x{r['vs_vanilla']:.3f} vs vanilla")
        print(f"wrote {write_record(res, Path(a.out), 'cpu')}")
        return
    if a.what == "memory":
        from .memory import bench_memory

        res = bench_memory(a.model, a.batch, a.seq, device=a.device)
        for k, v in res["measured"].items():
            print(f"{k:20s} measured {v / 2**20:9.2f} MiB   analytic {res['analytic'].get(k, float('nan')) / 2**20:9.2f} MiB")
        print(f"wrote {write_record(res, Path(a.out), a.device)}")
        return
    if a.what == "qpt":
        from .qpt import RECIPES, bench_qpt

        unknown = [r for r in a.recipe or [] if not r.startswith("qpt_")]
        if unknown:
            raise BenchError(f"--recipe {unknown[0]!r} is not a quantized pre-training recipe; valid: the qpt_* "
                             f"recipes (`qexp ls recipes`)")
        res = bench_qpt(a.model, tuple(a.recipe or RECIPES), a.batch, a.seq, a.repeats, threads=a.threads)
        for r in res["rows"]:
            print(f"{r['model']:10s} {r['recipe']:18s} {r['ms_per_step']:8.1f} ms/step "
                  f"{r['tokens_per_s']:8.0f} tok/s  x{r['vs_fp32']:.3f} vs fp32")
        print(f"wrote {write_record(res, Path(a.out), 'cpu')}")
        return
    if a.what == "ddp":
        from .ddp import bench_ddp

        if a.batch % a.procs:
            raise BenchError(f"--batch {a.batch} must be a multiple of --procs {a.procs} (each process takes an equal "
                             f"share of the global batch)")
        res = bench_ddp(a)
        for r in res["rows"]:
            print(f"{r['processes']} process(es) x {r['threads_per_process']} thread(s): {r['median_step_s'] * 1e3:8.1f}"
                  f" ms/step {r['tokens_per_s']:8.0f} tok/s  x{r['vs_1x1']:.3f} vs 1 x 1")
        print(f"wrote {write_record(res, Path(a.out), 'cpu')}")
        return
    if a.what == "pretrain":
        from .pretrain import VARIANTS, bench_pretrain

        unknown = [m for m in a.model or [] if m not in VARIANTS]
        if unknown:
            raise BenchError(f"--model {unknown[0]!r} has no variant set; valid: {', '.join(VARIANTS)}")
        res = bench_pretrain(tuple(a.model or VARIANTS), a.batch, a.seq, a.repeats, threads=a.threads)
        for r in res["rows"]:
            print(f"{r['model']:10s} {r['attention']:14s} {r['ms_per_step']:8.1f} ms/step "
                  f"{r['tokens_per_s']:8.0f} tok/s  x{r['vs_vanilla']:.3f} vs vanilla")
        print(f"wrote {write_record(res, Path(a.out), 'cpu')}")
        return
    import torch

    from .gemm import bench_gemm, bench_layer

    if a.what == "gemm":
        res = bench_gemm(a.shapes, a.impl, a.repeats, a.inner, a.device)
        device = "cuda" if a.device != "cpu" and torch.cuda.is_available() else "cpu"
    else:
        res = bench_layer(a.bsz, a.seq, a.repeats, device=a.device, backend=a.backend)
        device = "cuda" if a.device.startswith("cuda") else "cpu"
    print(f"wrote {write_record(res, Path(a.out), device)}")
