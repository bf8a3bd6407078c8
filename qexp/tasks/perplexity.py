"""Language-model perplexity on a text corpus (WikiText-2, PTB): the ZeroQuant Table I.1/I.2 "Wikitext-2" row.

Text: the hub dataset (``task.hub``: WikiText-2 is ``Salesforce/wikitext``/``wikitext-2-raw-v1``, the copy lm-eval and
the papers use) with its rows concatenated as they are (each row keeps its newline, so the text equals the raw file),
or, with ``task.data_dir=DIR``, the raw files named in ``task.files``.  ``task.detokenize: wikitext`` undoes WikiText's
tokenization (`` @-@ `` -> ``-``, space before punctuation, ...), as lm-eval and Megatron do before scoring GPT models.

Scoring (the fixed-length-model recipe of the HF perplexity guide): the token stream (no special tokens added) is cut
into windows of ``context_length`` tokens every ``stride`` tokens; each window predicts only the tokens the previous
window did not score, so with ``stride == context_length`` (the default) windows do not overlap and every token
after the first is predicted once.  Perplexity = exp(total NLL / predicted tokens).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from ..common.hub import from_hub
from ..common.registry import Registry

DETOKENIZERS: Registry = Registry("detokenizer")


@DETOKENIZERS.register("none")
def no_detokenization(text: str) -> str:
    return text


@DETOKENIZERS.register("wikitext")
def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's tokenization (the rules GPT-2/Megatron/lm-eval apply before scoring)."""
    s = text.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")):  # number separators
        s = s.replace(a, b)
    for p in (":", ";", ".", "!", "?", ","):  # no space before punctuation
        s = s.replace(f" {p} ", f"{p} ")
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)  # brackets hug their content
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    s = s.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")  # section headings
    s = s.replace(" " + chr(176) + " ", chr(176))
    s = s.replace(" \n", "\n").replace("\n ", "\n")
    s = s.replace(" N ", " 1 ").replace(" 's", "'s")
    return s


def perplexity_of(nll: float) -> float:
    """exp(mean negative log-likelihood), ``inf`` past float64's range (a model whose loss exploded: Adam's 8-bit
    second moments do this in quantized pre-training) instead of an OverflowError that would lose the run."""
    if math.isnan(nll):
        return math.nan
    return math.exp(nll) if nll < 709.0 else math.inf


class TextDataError(FileNotFoundError):
    pass


def load_text(task, which: str) -> str:
    """The ``which`` ("eval" or "calibration") text of a perplexity task, detokenized."""
    if which not in ("eval", "calibration"):
        raise ValueError(f"unknown text split {which!r}; valid: eval, calibration")
    if task.get("data_dir"):
        path = Path(task.data_dir) / task.files[which]
        if not path.exists():
            have = sorted(p.name for p in Path(task.data_dir).glob("*")) if Path(task.data_dir).is_dir() else []
            raise TextDataError(f"task {task.name!r}: no {which} file {path} (task.files.{which}); files in "
                                f"task.data_dir: {have or 'none (no such directory)'}")
        text = path.read_text(encoding="utf-8")
    else:
        import datasets

        split = task.hub[f"{which}_split"]

        def load(local_only: bool):
            return datasets.load_dataset(task.hub.path, task.hub.get("name"), split=split)

        ds = from_hub(load, f"dataset {task.hub.path}/{task.hub.get('name')} (split {split})",
                      f"task.data_dir=DIR with the raw files {dict(task.files)}", datasets_lib=True)
        rows = ds[task.hub.field]
        sep = task.hub.get("join", "")
        text = sep.join(rows)
    return DETOKENIZERS.get(task.get("detokenize", "none"))(text)


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """The whole text as one (1, n) stream of token ids, no special tokens."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return torch.tensor([ids], dtype=torch.long)


def windows(n_tokens: int, context: int, stride: int | None) -> list[tuple[int, int, int]]:
    """(begin, end, n_scored) of each window: ``ids[begin:end]`` goes in and its last ``n_scored`` tokens are scored
    (the first window scores all but its first token)."""
    stride = stride or context
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in 1..context_length={context}, got {stride}")
    if n_tokens < 2:
        raise ValueError(f"the text has {n_tokens} token(s); perplexity needs at least 2")
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        n_scored = end - prev_end if begin else end - 1
        if n_scored > 0 and end - begin > 1:
            out.append((begin, end, min(n_scored, end - begin - 1)))
        prev_end = end
        if end == n_tokens:
            break
    return out


@torch.no_grad()
def evaluate(model, ids: torch.Tensor, context: int, stride: int | None, device, limit: int | None = None,
             progress=None) -> dict:
    """Perplexity of ``model`` (called as ``model(input_ids=...)``, returning ``.logits``) on ``ids`` (1, n)."""
    model.eval()
    spans = windows(ids.shape[1], context, stride)
    if limit:
        spans = spans[:int(limit)]
    it = progress(spans, desc="perplexity") if progress else spans
    nll, count = 0.0, 0
    for begin, end, n_scored in it:
        x = ids[:, begin:end].to(device)
        logits = model(input_ids=x).logits[0, -n_scored - 1:-1].float()
        if not torch.isfinite(logits).all():
            raise FloatingPointError(f"non-finite logits in the window of tokens {begin}..{end}")
        nll += F.cross_entropy(logits, x[0, -n_scored:], reduction="sum").item()
        count += n_scored
    return {"perplexity": perplexity_of(nll / count), "nll": nll / count, "tokens": count, "windows": len(spans),
            "tokens_in_text": int(ids.shape[1])}


def random_windows(ids: torch.Tensor, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` windows of ``length`` tokens at random offsets of the stream (calibration and LKD data)."""
    total = ids.shape[1]
    if total < length:
        raise ValueError(f"the calibration text has {total} tokens, fewer than one window of {length}")
    starts = torch.randint(0, total - length + 1, (n,), generator=generator)
    return torch.stack([ids[0, s:s + length] for s in starts.tolist()])


@torch.no_grad()
def evaluate_batched(model, ids: torch.Tensor, context: int, device, batch_size: int = 16,
                     limit: int | None = None, progress=None) -> dict:
    """:func:`evaluate` with ``stride == context`` (non-overlapping windows), ``batch_size`` windows per forward: the
    same windows, the same tokens scored (all but each window's first), the same perplexity."""
    model.eval()
    spans = windows(ids.shape[1], context, None)
    if limit:
        spans = spans[:int(limit)]
    full = [s for s in spans if s[1] - s[0] == context]
    rest = [s for s in spans if s[1] - s[0] != context]   # the text's last, shorter window
    groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in rest]
    it = progress(groups, desc="perplexity") if progress else groups
    nll, count = 0.0, 0
    for group in it:
        x = torch.stack([ids[0, b:e] for b, e, _ in group]).to(device)
        logits = model(input_ids=x).logits[:, :-1].float()
        if not torch.isfinite(logits).all():
            raise FloatingPointError(f"non-finite logits in the windows starting at token {group[0][0]}")
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
        count += x[:, 1:].numel()
    return {"perplexity": perplexity_of(nll / count), "nll": nll / count, "tokens": count, "windows": len(spans),
            "tokens_in_text": int(ids.shape[1])}
