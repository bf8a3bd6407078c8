"""Tokenize standardised task data (text_a, text_b, label) for a model."""
from __future__ import annotations

import datasets
import torch
from torch.utils.data import DataLoader, RandomSampler
from transformers import DataCollatorWithPadding

TEXT = ("text_a", "text_b")


def encode(ds: datasets.Dataset, tokenizer, max_length: int, pad_to_max_length: bool) -> datasets.Dataset:
    pair = "text_b" in ds.column_names

    def tok(batch):
        texts = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
        return tokenizer(*texts, truncation=True, max_length=max_length,
                         padding="max_length" if pad_to_max_length else False)

    return ds.map(tok, batched=True, remove_columns=[c for c in TEXT if c in ds.column_names],
                  desc="tokenize", load_from_cache_file=False)


def limit(ds: datasets.Dataset, n) -> datasets.Dataset:
    return ds if n is None or n >= len(ds) else ds.select(range(int(n)))


def sample(ds: datasets.Dataset, n: int, seed: int) -> datasets.Dataset:
    """``n`` examples drawn with a seeded sampler, in draw order (only these get tokenized for calibration)."""
    g = torch.Generator().manual_seed(int(seed))
    return ds.select(list(RandomSampler(range(len(ds)), generator=g, num_samples=int(n))))


def loader(ds, tokenizer, batch_size: int):
    return DataLoader(ds, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
