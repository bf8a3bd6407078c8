import datasets

from qexp.tasks.encode import sample


def test_calibration_sample_is_seeded_and_only_n_long():
    ds = datasets.Dataset.from_dict({"text_a": [f"s{i}" for i in range(50)], "label": list(range(50))})
    a, b, c = sample(ds, 7, seed=3), sample(ds, 7, seed=3), sample(ds, 7, seed=4)
    assert len(a) == 7 and a["label"] == b["label"] and a["label"] != c["label"]
    assert len(set(a["label"])) == 7  # without replacement while n <= len(ds)
    assert len(sample(ds, 120, seed=0)) == 120  # more draws than examples: cycles through permutations
