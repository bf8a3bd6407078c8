import os
import subprocess
import sys
from pathlib import Path

from qexp.cli import compose
from qexp.runner import run

REPO = Path(__file__).resolve().parents[1]


def run_cfg(tmp_path, *overrides, layers: int | None = None):
    depth = [f"model.architecture.num_hidden_layers={layers}"] if layers else []
    model = [] if any(o.startswith("model=") for o in overrides) else ["model=tiny_bert"]
    cfg = compose([*model, "debug=smoke", *depth, f"results_dir={tmp_path / 'runs'}",
                   f"cache_dir={tmp_path / 'cache'}", *overrides])
    return run(cfg, list(overrides))


def qexp(*args, cwd=REPO, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "qexp.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)
