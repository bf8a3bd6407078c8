"""Issue 26 #1: the recipe is interpreted once, into a RunSpec, before anything loads; the pipeline and the task kinds
decide from it, so the checks that used to read the raw recipe in five places cannot disagree."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from qexp.cli import compose
from qexp.experiment.spec import NoOpRecipeError, RunSpec

ROOT = Path(__file__).resolve().parents[1] / "qexp"


def test_the_spec_holds_every_recipe_decision():
    spec = RunSpec.parse(compose(["model=tiny_bert", "task=rte", "+recipe=qat_w8a8"]))
    assert spec.recipe == "qat_w8a8" and spec.qat["batch_size"] > 0 and spec.training is None
    assert spec.ptq_groups_on == ["weights", "activations"] and spec.backend == "fake"
    assert spec.calibration.batch_size == 16     # QAT's init_calibration on top of the task's (the authors' README)
    spec = RunSpec.parse(compose(["model=gpt2_cpu", "task=qpt_clm", "+recipe=qpt_w8a8"]))
    assert spec.training is not None and spec.qat is None and spec.ptq_groups_on == []
    spec = RunSpec.parse(compose(["model=tiny_bert", "task=rte", "+recipe=pwq_manual"]))
    assert spec.steps.bcq is not None and spec.steps.lkd is None


def test_qpt_switched_off_is_off_everywhere():
    """``qpt.enabled=false`` was off for the kind and quantized training but quantizing for the pipeline's guard,
    which then recorded an FP run under the recipe's name: now one parser decides, and the guard refuses."""
    cfg = compose(["model=gpt2_cpu", "task=qpt_clm", "+recipe=qpt_w8a8", "++recipe.qpt.enabled=false"])
    with pytest.raises(NoOpRecipeError, match="quantizes nothing"):
        RunSpec.parse(cfg)


def test_an_integer_backend_refuses_bcq_weights_from_the_spec():
    from qexp.integer.backends import IntegerBackendError

    cfg = compose(["model=tiny_bert", "task=rte", "+recipe=pwq_manual", "inference.backend=torch_int"])
    with pytest.raises(IntegerBackendError, match="binary-coding"):
        RunSpec.parse(cfg)


def test_bcq_is_checked_against_every_bit_width_the_sites_set():
    """BCQ quantizes each weight site with that site's bits, not only recipe.quant.weights.bits."""
    from qexp.quant.bcq import BCQError

    cfg = compose(["model=tiny_bert", "task=rte", "+recipe=pwq_alternating",
                   "+recipe.quant.sites=[{match: 'encoder.layer.0.*.weight', enabled: true, bits: 12}]"])
    with pytest.raises(BCQError, match="BCQ bits=12 must be an integer in 1..8"):
        RunSpec.parse(cfg)


def test_no_kind_and_no_pipeline_step_reads_the_raw_recipe():
    """The seam this spec exists for: below the pipeline's config preparation, nothing interprets ``cfg.recipe``
    again (the spec parses it; records keep the resolved config)."""
    readers = []
    for path in [*(ROOT / "kinds").glob("*.py"), ROOT / "experiment" / "pipeline.py", ROOT / "experiment" / "steps.py"]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bcfg\.recipe\b", line) and "cfg.recipe = FP32" not in line:
                readers.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert readers == []
