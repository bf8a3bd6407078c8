"""The embedded default (`qexp run` with no overrides) on the real MiniLM-L6 and real pydoc text, offline."""
from qexp.cli import compose
from qexp.experiment.pipeline import run


def test_default_run_on_the_real_model(tmp_path, minilm_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = [f"results_dir={tmp_path}", "progress=false", "task.eval_windows=8"]
    fp = run(compose(base))
    assert fp["model"] == "minilm_l6" and fp["task"] == "text_outliers" and fp["recipe"] == "fp32"
    assert fp["metrics"]["final_rel_error"] == 0.0
    # a real pretrained BERT-family model has outliers far beyond a Gaussian's (kurtosis 3)
    assert fp["metrics"]["avg_kurtosis"] > 30 and fp["metrics"]["max_inf_norm"] > 20
    w8a8 = run(compose([*base, "+recipe=w8a8_ptq"]))
    w8a32 = run(compose([*base, "+recipe=w8a32_ptq"]))
    assert 0 < w8a32["metrics"]["final_rel_error"] and 0 < w8a8["metrics"]["final_rel_error"]
    assert w8a8["metrics"]["mean_site_rel_error"] > w8a32["metrics"]["mean_site_rel_error"]
    assert set(w8a8["metrics"]["site_rel_error"]) == set(fp["metrics"]["site_rel_error"])
    assert len(fp["metrics"]["site_rel_error"]) == 3 + 13 * 6
