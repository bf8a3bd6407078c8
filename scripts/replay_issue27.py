#!/usr/bin/env python3
"""Replay issue 27's hurried-user cases on tiny models and print each outcome (exit status, last line of stderr).

Each case runs ``qexp`` as a user types it, in a fresh process, in a scratch folder (nothing in the checkout changes):

    python scripts/replay_issue27.py [--only 1,7,15]     # ~2 minutes on a 2-core CPU

The expected outcome of every case is the issue's "what a user should get"; the tests in tests/test_hurried_user.py,
tests/report/test_tables.py, tests/test_pretrain.py, tests/test_bcq_search.py and tests/test_qpt.py check them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLUE = REPO.parent / "shared" / "data" / "glue" / "RTE"


def qexp(*args, cwd, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "qexp.cli", *args], capture_output=True, text=True, cwd=cwd,
                       timeout=timeout, env=env)
    lines = [x for x in (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or [""])
             if "Traceback" in x or x.startswith("qexp") or "error" in x.lower()] or [r.stderr.strip()[-200:]]
    traceback = "Traceback" in r.stderr
    return r.returncode, (lines[-1] if lines else "")[:170], traceback


def cases(tmp: Path):
    heldout = ["task.heldout.wikitext2.data_dir=../shared/data/wikitext-2-raw",
               "task.heldout.ptb.data_dir=../shared/data/ptb"]
    smoke = ["model=tiny_bert", "debug=smoke", f"results_dir={tmp / 'runs'}", f"cache_dir={tmp / 'cache'}"]
    rte = tmp / "RTE"
    if GLUE.is_dir() and not rte.exists():
        shutil.copytree(GLUE, rte)
    (tmp / "file").write_text("")
    (tmp / "scratch").symlink_to(tmp / "unmounted")
    yield "1", "tables --runs results/run (typo)", ["tables", "--runs", str(tmp / "results" / "run"),
                                                     "--out", str(tmp / "tables")]
    yield "2", "qpt exclude=[*] (quantizes nothing)", ["run", "task=qpt_clm", "model=gpt2_cpu", "+recipe=qpt_w8a8",
                                                        "recipe.qpt.exclude_sites=[*]", *smoke[2:], *heldout,
                                                        "task.data_dir=../shared/data/brown_austen"]
    yield "2b", "qpt.enabled=false", ["run", "task=qpt_clm", "model=gpt2_cpu", "+recipe=qpt_w8a8",
                                      "++recipe.qpt.enabled=false", *smoke[2:], *heldout,
                                      "task.data_dir=../shared/data/brown_austen"]
    yield "7a", "seed=1.5", ["run", *smoke, "seed=1.5"]
    yield "7b", "++task.dat_dir=DIR (typo)", ["run", *smoke, "task=rte", f"++task.dat_dir={rte}"]
    yield "10", "calibration.batch_size=100000", ["run", *smoke, "+recipe=w8a8_ptq", "task=rte",
                                                 f"task.data_dir={rte}", "calibration.batch_size=100000"]
    yield "11a", "bench gemm --device tpu", ["bench", "gemm", "--device", "tpu", "--out", str(tmp / "bench")]
    yield "11b", "bench layer --bsz 0", ["bench", "layer", "--bsz", "0"]
    yield "11c", "bench pretrain --threads 0", ["bench", "pretrain", "--threads", "0"]
    yield "13a", "results_dir a dangling symlink", ["run", *smoke[:2], f"results_dir={tmp / 'scratch' / 'runs'}"]
    yield "13b", "results_dir under a file", ["run", *smoke[:2], f"results_dir={tmp / 'file' / 'runs'}"]
    yield "14a", "task.seq_length=0", ["run", "task=pretrain_clm", "model=opt_cpu", "task.seq_length=0",
                                       "task.data_dir=../shared/data/brown_austen", *smoke[2:]]
    yield "14b", "task.limit.train=abc", ["run", *smoke, "task=rte", f"task.data_dir={rte}", "task.limit.train=abc"]
    yield "14c", "model.attention.alpha=abc", ["run", "task=pretrain_clm", "model=opt_cpu",
                                               "model/attention=clipped_alpha", "model.attention.alpha=abc",
                                               "task.data_dir=../shared/data/brown_austen", *smoke[2:]]
    yield "15a", "bench gemm --repeats 0", ["bench", "gemm", "--repeats", "0"]
    yield "15b", "bench gemm --inner 0", ["bench", "gemm", "--inner", "0"]
    yield "15c", "bench gemm --out under a file", ["bench", "gemm", "--out", str(tmp / "file" / "b")]
    yield "15d", "bench layer --backend nope", ["bench", "layer", "--backend", "nope"]
    yield "15e", "bench memory --batch -1", ["bench", "memory", "--batch", "-1"]
    yield "15f", "bench fakequant --model nope", ["bench", "fakequant", "--model", "nope"]
    yield "15g", "bench fakequant --recipe nope", ["bench", "fakequant", "--recipe", "nope"]
    yield "15h", "bench eval seeed=1", ["bench", "eval", "seeed=1"]
    yield "15i", "ls sites model=nope", ["ls", "sites", "model=nope"]
    yield "18", "w8a8_ptq on cpu_int8", ["run", *smoke, "+recipe=w8a8_ptq", "inference.backend=cpu_int8"]
    yield "19", "header-only train.tsv", ["run", *smoke, "+recipe=w8a8_ptq", "task=rte", f"task.data_dir={tmp / 'H'}"]
    yield "ok", "a valid smoke run (for contrast)", ["run", *smoke, "+recipe=w8a8_ptq"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated case ids")
    a = ap.parse_args()
    only = set(a.only.split(",")) if a.only else None
    out = []
    with tempfile.TemporaryDirectory(prefix="qexp-replay-") as d:
        tmp = Path(d)
        (tmp / "H").mkdir()
        if GLUE.is_dir():
            (tmp / "H" / "train.tsv").write_text((GLUE / "train.tsv").read_text().splitlines()[0] + "\n")
            shutil.copy(GLUE / "dev.tsv", tmp / "H" / "dev.tsv")
        print("| # | case | exit | traceback | what qexp said |\n|---|---|---|---|---|", flush=True)
        for cid, title, args in cases(tmp):
            if only and cid not in only:
                continue
            code, last, tb = qexp(*args, cwd=REPO)
            out.append({"case": cid, "title": title, "exit": code, "traceback": tb, "said": last})
            print(f"| {cid} | {title} | {code} | {'yes' if tb else 'no'} | {last.replace('|', '/')} |", flush=True)
    print(json.dumps(out), file=sys.stderr)


if __name__ == "__main__":
    main()
