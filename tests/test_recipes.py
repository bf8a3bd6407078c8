"""Every recipe config is composed and run once on tiny_bert (STYLE 13): a new recipe is covered the day it lands."""
import pytest

from qexp.cli import conf_dir

from .helpers import run_cfg

RECIPES = sorted(p.stem for p in (conf_dir() / "recipe").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_on_a_glue_task(recipe, tmp_path, rte_like):
    rec = run_cfg(tmp_path, f"+recipe={recipe}", "task=rte", f"task.data_dir={rte_like}")
    assert rec["recipe"] == recipe
    assert 0.0 <= rec["score"] <= 100.0
    assert rec["metrics"]["validation"]["n"] == 16
    quantized = rec["sites"]["activation"]["quantized"] + rec["sites"]["weight"]["quantized"]
    assert (quantized == 0) == (recipe == "fp32")


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_on_the_label_free_task(recipe, tmp_path):
    rec = run_cfg(tmp_path, f"+recipe={recipe}")
    m = rec["metrics"]
    if recipe == "fp32":
        assert m["final_rel_error"] == 0.0 and m["mean_site_rel_error"] == 0.0
    else:
        assert 0.0 < m["final_rel_error"] < 1.0
    assert m["max_inf_norm"] > 0 and m["avg_kurtosis"] > 0
