import os
import subprocess
import sys
from pathlib import Path

from qexp.cli import compose
from qexp.experiment.pipeline import run

REPO = Path(__file__).resolve().parents[1]


def run_cfg(tmp_path, *overrides, layers: int | None = None):
    depth = [f"model.architecture.num_hidden_layers={layers}"] if layers else []
    model = [] if any(o.startswith("model=") for o in overrides) else ["model=tiny_bert"]
    cfg = compose([*model, "debug=smoke", *depth, f"results_dir={tmp_path / 'runs'}",
                   f"cache_dir={tmp_path / 'cache'}", *overrides])
    return run(cfg, list(overrides))


def cli(capsys, *args) -> tuple[int, str, str]:
    """``qexp ARGS`` in this process (no interpreter start-up, no second torch import): (exit code, stdout, stderr)."""
    from qexp.cli import main

    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err


def qexp(*args, cwd=REPO, timeout=300):
    """``qexp ARGS`` as a user types it, in a fresh process (the end-to-end tests)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "qexp.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


def tiny_configured_decoder(recipe: str):
    """A one-layer, 32-wide gpt2_cpu decoder wrapped and configured for ``recipe`` (quantizers off until calibrated),
    with its composed config: what the BCQ step and search tests quantize."""
    from omegaconf import OmegaConf

    from qexp.cli import compose
    from qexp.config.quant import effective_calibration, quant_config
    from qexp.models import scratch
    from qexp.models.families import family_of
    from qexp.quant.sites import configure

    cfg = compose(["task=qpt_clm", "model=gpt2_cpu", "model.architecture.num_hidden_layers=1",
                   "model.architecture.hidden_size=32", "model.architecture.num_attention_heads=2",
                   "model.architecture.intermediate_size=64", f"+recipe={recipe}"])
    model = family_of(cfg.model).wrap(scratch.build(cfg.model, 64, 16, {}, seed=0))
    configure(model, quant_config(OmegaConf.to_container(cfg.recipe, resolve=True), effective_calibration(cfg)))
    return model, cfg


WORDS = ("the quick brown fox jumps over the lazy dog while a small cat sat on the warm mat and watched birds sing in "
         "the old tree near the river bank every morning").split()


def write_corpus(folder: Path, train: int, valid: int, blank_every: int | None = None) -> Path:
    """A small English corpus in brown_austen's layout (``train.txt``, ``valid.txt``; one paragraph of 8-29 words per
    line, a blank line after every ``blank_every`` paragraphs), the same text for the same arguments."""
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("valid", valid)):
        lines = []
        for i in range(n):
            lines.append(" ".join(rng.choice(WORDS, size=int(rng.integers(8, 30)))) + ".")
            if blank_every and i % blank_every == blank_every - 1:
                lines.append("")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


def killing_trainer(real, step: int, max_steps: int | None = None):
    """A stand-in for ``qexp.train.pretrain._trainer_class`` (pass the real one): its Trainer raises KeyboardInterrupt
    at the end of training step ``step`` -- a kill between two checkpoints -- of the training with ``max_steps`` (None:
    any; a head warm-up and the continued training are two trainings in one run)."""
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == step and max_steps in (None, args.max_steps):
                raise KeyboardInterrupt("killed")

    def factory():
        class Killed(real()):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self.add_callback(Kill())
        return Killed

    return factory
