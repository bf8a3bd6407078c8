"""QAT with learnable ranges (qexp/qat.py, Quantizer state ``learned``).

The range gradients are checked against formulas derived by hand from Eq. 1-2 with the straight-through estimator
(round(u) has derivative 1 in u), evaluated in numpy float64: an independent reference, not autograd again."""
import numpy as np
import pytest
import torch
from torch import nn

from qexp.train import qat
from qexp.quant.estimators import CalibrationError
from qexp.quant.quantizer import Quantizer, QuantSpec


def _learned(lo: float, hi: float, bits: int, symmetric: bool) -> Quantizer:
    q = Quantizer("t", QuantSpec(bits=bits, symmetric=symmetric))
    q.x_min, q.x_max = torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64)
    q.set_state("learned")
    return q


def _grads(q: Quantizer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d x_q / d x_min and d x_q / d x_max for every element separately (x_q summed over one element at a time)."""
    gmin, gmax = [], []
    for v in x:
        q.zero_grad()
        q(torch.tensor([v], dtype=torch.float64)).sum().backward()
        gmin.append(0.0 if q.x_min.grad is None else q.x_min.grad.item())
        gmax.append(0.0 if q.x_max.grad is None else q.x_max.grad.item())
    return np.array(gmin), np.array(gmax)


def test_symmetric_range_gradient_matches_the_hand_formula():
    # s = x_max / 127 (x_max > -x_min, so the maximum picks x_max); inside the grid x_q = s * round(x / s) gives
    # d x_q / d x_max = (round(x/s) - x/s) / 127; clipped above x_q = 127 s -> 1; clipped below x_q = -128 s -> -128/127.
    lo, hi = -0.7, 1.3
    s = hi / 127
    x = np.array([-2.0, -1.31, -0.5, -0.0123, 0.0, 0.3337, 0.9999, 1.2, 1.35, 4.0])
    gmin, gmax = _grads(_learned(lo, hi, 8, True), x)
    u = x / s
    expected = np.where(u > 127, 1.0, np.where(u < -128, -128 / 127, (np.round(u) - u) / 127))
    np.testing.assert_allclose(gmax, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gmin, 0.0, atol=0)  # x_min is below |x_max|: it does not set the scale


def test_asymmetric_range_gradient_matches_the_hand_formula():
    # s = (hi - lo)/255, z = round(-lo/s) (STE: dz = d(-lo/s)).  Inside: x_q = s round(x/s), z cancels:
    #   d/dhi = (round(u) - u)/255, d/dlo = -(round(u) - u)/255.
    # Clipped above: x_q = (255 - z) s:  d/dhi = (255 - z - lo/s)/255,  d/dlo = 1 - (255 - z - lo/s)/255.
    # Clipped below: x_q = -z s:         d/dhi = -(z + lo/s)/255,       d/dlo = 1 + (z + lo/s)/255.
    lo, hi = -0.37, 2.11
    s = (hi - lo) / 255
    z = np.round(-lo / s)
    x = np.array([-1.0, -0.4, -0.2, 0.0, 0.013, 0.77, 1.5, 2.1, 2.2, 3.0])
    gmin, gmax = _grads(_learned(lo, hi, 8, False), x)
    u = x / s
    xi = np.round(u) + z
    above, below = xi > 255, xi < 0
    inside = ~(above | below)
    exp_hi = np.where(inside, (np.round(u) - u) / 255,
                      np.where(above, (255 - z - lo / s) / 255, -(z + lo / s) / 255))
    exp_lo = np.where(inside, -(np.round(u) - u) / 255,
                      np.where(above, 1 - (255 - z - lo / s) / 255, 1 + (z + lo / s) / 255))
    assert above.any() and below.any() and inside.any()
    np.testing.assert_allclose(gmax, exp_hi, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gmin, exp_lo, rtol=1e-9, atol=1e-12)


def test_learned_ranges_are_parameters_and_fixing_keeps_their_values():
    q = Quantizer("t", QuantSpec(bits=8))
    q.x_min, q.x_max = torch.tensor([-1.0]), torch.tensor([2.0])
    keys = set(q.state_dict())
    q.set_state("learned")
    assert isinstance(q.x_min, nn.Parameter) and {n for n, _ in q.named_parameters()} == {"x_min", "x_max"}
    with torch.no_grad():
        q.x_max += 0.5
    q.set_state("fixed")
    assert not list(q.parameters()) and not isinstance(q.x_max, nn.Parameter)
    assert q.x_max.item() == 2.5 and q.x_min.item() == -1.0
    assert set(q.state_dict()) == keys  # export format does not depend on the state


def test_range_learning_rate_in_scale_units():
    """scale_units: lr x grid steps (8-bit signed symmetric weights: 127; 8-bit asymmetric activations: 255; 4-bit
    signed: 7; symmetric non-negative 8-bit: 255), so an Adam step of size lr on x_max is a step of lr on the scale."""
    qs = {}
    for name, bits, sym, lo in (("w8", 8, True, -1.0), ("a8", 8, False, -1.0), ("w4", 4, True, -1.0),
                                ("u8", 8, True, 0.0)):
        q = Quantizer(name, QuantSpec(bits=bits, symmetric=sym))
        q.x_min, q.x_max = torch.tensor([lo]), torch.tensor([2.0])
        q.set_state("learned")
        qs[name] = q
    model = nn.ModuleDict({**qs, "lin": nn.Linear(2, 2)})
    hp = {"learning_rate": 1e-5, "weight_decay": 0.01, "range_lr": "scale_units"}
    groups = qat.param_groups(model, hp)
    assert groups[0]["lr"] == 1e-5 and groups[0]["weight_decay"] == 0.01 and len(groups[0]["params"]) == 2
    lrs = {n: g["lr"] for g in groups[1:] for n in qs if g["params"][0] is qs[n].x_min}
    assert lrs == pytest.approx({"w8": 127e-5, "a8": 255e-5, "w4": 7e-5, "u8": 255e-5})
    assert all(g["weight_decay"] == 0.0 for g in groups[1:])
    assert {g["lr"] for g in qat.param_groups(model, {**hp, "range_lr": "same"})} == {1e-5}


def test_learned_state_needs_a_calibrated_range():
    q = Quantizer("t", QuantSpec(bits=8))
    with pytest.raises(CalibrationError, match="no range: calibrate"):
        q.set_state("learned")


def test_hyperparameters_are_checked():
    good = {"learning_rate": 1e-5, "batch_size": 8, "epochs": 3, "attn_dropout": 0.1, "warmup_ratio": 0.1,
            "weight_decay": 0.0, "max_steps": -1, "range_lr": "scale_units"}
    assert qat.hyperparameters(good)["batch_size"] == 8
    with pytest.raises(qat.QATError, match="learning_rate=0"):
        qat.hyperparameters({**good, "learning_rate": 0})
    with pytest.raises(qat.QATError, match=r"attn_dropout=1\.0"):
        qat.hyperparameters({**good, "attn_dropout": 1.0})
    with pytest.raises(qat.QATError, match=r"range_lr='scale' is not valid; valid: scale_units, same"):
        qat.hyperparameters({**good, "range_lr": "scale"})
    with pytest.raises(qat.QATError, match="epochs"):
        qat.hyperparameters({k: v for k, v in good.items() if k != "epochs"})


def _tiny_classifier(tmp_path):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertTokenizerFast,
    )

    torch.manual_seed(0)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(59)]]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(cfg), tok


W8A8 = {"weights": {"enabled": True, "bits": 8, "symmetric": True},
        "activations": {"enabled": True, "bits": 8, "symmetric": False}, "sites": []}


def test_qat_export_reproduces_the_evaluation_exactly_after_reload(tmp_path):
    from datasets import Dataset

    from qexp.models.quant_bert import QuantEncoder
    from qexp.quant.calibrate import calibrate
    from qexp.quant.sites import configure

    hf, tok = _tiny_classifier(tmp_path)
    qmodel = QuantEncoder(hf)
    configure(qmodel, W8A8)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 64, (16, 12), generator=g)
    calibrate(qmodel, lambda: [{"input_ids": ids[:8]}], 1, progress=False)
    train = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                               "labels": (ids[:, 0] % 2).tolist()})
    hp = {"learning_rate": 1e-2, "batch_size": 4, "epochs": 1, "attn_dropout": 0.0, "warmup_ratio": 0.1,
          "weight_decay": 0.0, "max_steps": 4, "range_lr": "scale_units"}
    meta = qat.train_qat(qmodel, train, tok, hp, seed=0, device="cpu", progress=False, workdir=tmp_path / "work")
    assert meta["steps"] == 4 and meta["ranges"]["sites_moved"] > 0
    assert all(q.state in ("fixed", "off") for q in qmodel.modules() if isinstance(q, Quantizer))
    test_ids = torch.randint(5, 64, (6, 10), generator=g)
    with torch.no_grad():
        before = qmodel(input_ids=test_ids).logits
    folder = qat.save_qat(qmodel, tok, tmp_path / "export", {"note": "test"})
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]
    reloaded = qat.load_qat(folder, W8A8)
    with torch.no_grad():
        after = reloaded(input_ids=test_ids).logits
    assert torch.equal(before, after)
    # and the export really carries the learned ranges: a freshly calibrated model differs
    fresh = QuantEncoder(_tiny_classifier(tmp_path)[0])
    configure(fresh, W8A8)
    calibrate(fresh, lambda: [{"input_ids": ids[:8]}], 1, progress=False)
    with torch.no_grad():
        assert not torch.equal(fresh(input_ids=test_ids).logits, after)


def test_reload_refuses_a_folder_without_ranges(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a qexp QAT export"):
        qat.load_qat(tmp_path, W8A8)


@pytest.mark.slow   # 5 epochs of QAT on the real model and real RTE pairs: minutes on 2 cores (`make test-slow`)
def test_qat_on_real_minilm_moves_ranges_and_lowers_the_training_loss(tmp_path, minilm_dir, glue_dir):
    """Landing check (issue 3, item 5) on real data: MiniLM-L6 + real RTE training pairs, W8A8 QAT with learned
    ranges; the cross-entropy on the fixed training subset it trains on goes down and the ranges move."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from qexp.cli import compose
    from qexp.models.quant_bert import QuantEncoder
    from qexp.quant.calibrate import calibrate
    from qexp.quant.sites import configure
    from qexp.tasks.encode import encode, limit, loader
    from qexp.tasks.glue import load_split

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    hf = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=2)
    qmodel = QuantEncoder(hf)
    configure(qmodel, W8A8)
    task = compose(["task=rte"]).task
    train = encode(limit(load_split(task, "train", str(glue_dir / "RTE")), 32), tok, 128, False)
    calibrate(qmodel, lambda: [next(iter(loader(train, tok, 8)))], 1, progress=False)

    def loss_on_subset() -> float:
        qmodel.eval()
        with torch.no_grad():
            return float(np.mean([qmodel(**b).loss.item() for b in loader(train, tok, 8)]))

    before = loss_on_subset()
    hp = {"learning_rate": 1e-4, "batch_size": 8, "epochs": 5, "attn_dropout": 0.0, "warmup_ratio": 0.1,
          "weight_decay": 0.0, "max_steps": -1, "range_lr": "scale_units"}
    meta = qat.train_qat(qmodel, train, tok, hp, seed=0, device="cpu", progress=False, workdir=tmp_path)
    after = loss_on_subset()
    print(f"\nminilm W8A8 QAT on 32 real RTE pairs, {meta['steps']} steps: loss {before:.4f} -> {after:.4f}; "
          f"ranges moved at {meta['ranges']['sites_moved']}/{meta['ranges']['sites']} sites, mean rel. width change "
          f"{meta['ranges']['mean_rel_width_change']:.2%}")
    assert meta["steps"] == 20
    assert meta["ranges"]["sites_moved"] == meta["ranges"]["sites"] > 100
    assert after < before - 0.02
