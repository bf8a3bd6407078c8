"""Perplexity: window bookkeeping, the score against a brute-force float64 reference, WikiText detokenization against
lm-eval's own function, and the local-file path."""
import math

import pytest
import torch
from omegaconf import OmegaConf
from transformers import GPT2Config, GPT2LMHeadModel

from qexp.tasks import perplexity as ppl

from ..conftest import SHARED_DATA


@pytest.mark.parametrize("n,context,stride", [(100, 16, None), (100, 16, 16), (100, 16, 5), (17, 16, 8), (16, 16, 1)])
def test_every_token_is_scored_at_most_once_and_with_overlap_all_are(n, context, stride):
    """Overlapping windows (stride < context) score every token after the first; non-overlapping ones (the default,
    as GPTQ/ZeroQuant-style evaluations and HF's guide with stride = context) cannot score a window's first token."""
    spans = ppl.windows(n, context, stride)
    scored = []
    for begin, end, k in spans:
        assert end - begin <= context and k <= end - begin - 1
        scored += list(range(end - k, end))
    if (stride or context) < context:
        assert scored == list(range(1, n))
    else:
        assert scored == [t for t in range(1, n) if t % context]


def test_bad_stride_and_tiny_text_are_errors():
    with pytest.raises(ValueError, match="stride must be in 1..context_length=8"):
        ppl.windows(100, 8, 9)
    with pytest.raises(ValueError, match="at least 2"):
        ppl.windows(1, 8, None)


@pytest.mark.parametrize("stride", [None, 6])
def test_perplexity_equals_a_brute_force_reference(stride):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=64)).eval()
    ids = torch.randint(0, 50, (1, 53))
    got = ppl.evaluate(model, ids, context=16, stride=stride, device="cpu")
    # reference: each target token t >= 1, predicted from the (at most 16-token) window that scores it, in float64
    nll = []
    with torch.no_grad():
        for begin, end, k in ppl.windows(53, 16, stride):
            logp = torch.log_softmax(model(ids[:, begin:end]).logits[0].double(), -1)
            for t in range(end - k, end):
                nll.append(-logp[t - begin - 1, ids[0, t]].item())
    assert got["tokens"] == len(nll) == (52 if stride else 52 - 3)  # no overlap: 3 window starts unscored
    assert got["perplexity"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-6)
    if stride is None:  # non-overlapping windows: HF's own shifted loss, token-weighted
        losses = [(model(ids[:, b:e], labels=ids[:, b:e]).loss.item(), e - b - 1) for b, e, _ in
                  ppl.windows(53, 16, None)]
        assert got["nll"] == pytest.approx(sum(lo * k for lo, k in losses) / got["tokens"], rel=1e-6)
    assert ppl.evaluate(model, ids, 16, stride, "cpu", limit=1)["windows"] == 1


def test_wikitext_detokenizer_equals_lm_evals():
    lm = pytest.importorskip("lm_eval.tasks.wikitext.preprocess_wikitext")
    sample = (' = Valkyria Chronicles III = \n\n Senjō no Valkyria 3 : <unk> Chronicles ( Japanese : 戦場のヴァルキュリア3 , '
              'lit . Valkyria of the Battlefield 3 ) , commonly referred to as " Valkyria Chronicles III " , is a 1 @,@ 000 '
              '@-@ year , 3 @.@ 5 km game . It \'s the players \' choice ; = = Plot = = \n')
    assert ppl.wikitext_detokenize(sample) == lm.wikitext_detokenizer({"page": sample})
    assert " @-@ " not in ppl.wikitext_detokenize(sample)
    real = SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw"
    if real.exists():
        text = real.read_text(encoding="utf-8")
        assert ppl.wikitext_detokenize(text) == lm.wikitext_detokenizer({"page": text})


def test_local_files_and_a_clear_error_when_one_is_missing(tmp_path):
    (tmp_path / "wiki.test.raw").write_text(" = A = \n\n 1 @,@ 000 people . \n")
    task = OmegaConf.create({"name": "wikitext2", "data_dir": str(tmp_path), "detokenize": "wikitext",
                             "files": {"eval": "wiki.test.raw", "calibration": "wiki.valid.raw"}})
    assert ppl.load_text(task, "eval") == " = A =\n\n1,000 people.\n"
    with pytest.raises(ppl.TextDataError, match=r"no calibration file .*wiki.valid.raw.*\['wiki.test.raw'\]"):
        ppl.load_text(task, "calibration")
