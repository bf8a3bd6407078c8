"""The cross-paper table (issue 28 #5): each paper's W8A8 PTQ method (rows) on the pretrained, vanilla- and
gated-fine-tuned model (columns); cells mean ± std [runs] over calibration seeds (hand-computed here); a method's
recipe overrides are part of its row (ZeroQuant's 64 groups), other overrides and extra settings (λ > 0) stay out;
every empty cell is – with its reason; the same output twice."""
from qexp.report import cross_paper

from .test_bondarenko2023_table9 import _rec


def _records():
    recs = [_rec("vanilla", "fp32", 0, 60.0, steps=0), _rec("vanilla", "fp32", 0, 40.0),
            _rec("gated_finetune", "fp32", 0, 41.0)]
    recs += [_rec("vanilla", "w8a8_ptq", 0, 100.0 + 2 * c, cal=c) for c in (0, 1, 2)]   # mean 102, std 2
    zq = [_rec("gated_finetune", "zq_w8a8", 0, 45.0 + c, cal=c) for c in (0, 1)]       # mean 45.5, std 0.71
    for r in zq:
        r["overrides"] = ["+recipe=zq_w8a8", "recipe.groups=64"]
    other = _rec("gated_finetune", "zq_w8a8", 0, 999.0, cal=2)
    other["overrides"] = ["recipe.groups=32"]                                            # another configuration
    lam = _rec("gated_finetune", "w8a8_ptq", 0, 777.0, lam=1e-4)                         # an extra setting: Table 9's
    mini = [_rec("vanilla", "fp32", 0, 30.0, steps=0, name="minilm_l6"),
            _rec("gated_finetune", "peg_ptq", 0, 22.0, steps=1200, name="minilm_l6"),
            _rec("clipped", "peg_ptq", 0, 99.0, steps=1200, name="minilm_l6")]             # not a column here
    return recs + zq + [other, lam] + mini


def test_rows_columns_cells_and_reasons(tmp_path):
    t, notes = cross_paper.table(_records())
    t = t.set_index("method")
    fp, w8a8 = t.loc["FP32 (no quantization)"], t.loc["2021: W8A8 per-tensor PTQ (Table 1)"]
    zq = t.loc["2022: ZeroQuant W8A8 (group-wise weights, token-wise activations; 64 groups)"]
    assert fp["SmolLM2-135M: pretrained"] == "60.00 [1]" and fp["SmolLM2-135M: gated FT"] == "41.00 [1]"
    assert w8a8["SmolLM2-135M: vanilla FT"] == "102.00 ± 2.00 [3]" and w8a8["SmolLM2-135M: gated FT"] == "–"
    assert zq["SmolLM2-135M: gated FT"] == "45.50 ± 0.71 [2]"
    peg = t.loc["2021: PEG-PTQ (Table 5)"]
    assert fp["MiniLM-L6: pretrained"] == "30.00 [1]" and peg["MiniLM-L6: gated FT"] == "22.00 [1]"
    assert "99.00" not in t.to_string() and peg["SmolLM2-135M: gated FT"] == "–"
    assert not t.isna().any().any() and not t.astype(str).apply(lambda c: c.str.contains("nan")).any().any()
    assert any("PEG-PTQ (Table 5) –: its site rules name BERT-encoder sites" in n for n in notes)
    assert any("PEG-PTQ (Table 5), MiniLM-L6: vanilla FT –: not run yet" in n for n in notes)
    assert any("W8A8 per-tensor PTQ (Table 1), SmolLM2-135M: gated FT –: not run yet" in n for n in notes)


def test_the_same_output_twice(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = cross_paper.build(_records(), tmp_path / "a"), cross_paper.build(_records(), tmp_path / "b")
    for key in a:
        assert a[key].read_text() == b[key].read_text()
