"""Sentence-transformers text vectors that do not depend on their batch.

`SentenceTransformer.encode` pads each batch to its longest text, and another padding length changes the
float bits of a text's vector: the embedding shards of one phase on two workers disagreed in the 8th digit.
Here every text is encoded in a batch of a fixed number of rows, padded to its own length rounded up to
TEXT_LENGTH_STEP tokens.
"""
from __future__ import annotations

from typing import Any

import numpy as np

TEXT_LENGTH_STEP = 16  # texts are padded to a multiple of this many tokens


def encode_fixed_shape(st: Any, texts: list[str], device: str, rows: int = 32) -> np.ndarray:
    """(n, d) sentence-transformers vectors, each computed in a (rows, L) token batch where L is its own
    length rounded up to TEXT_LENGTH_STEP (rows filled with copies): a text's vector depends on the text alone,
    not on which other texts shared its batch (`encode` pads to the batch's longest text, and another padding
    length changes the float bits: shards of one phase on two workers then disagreed in the 8th digit)."""
    import torch

    tok, max_len = st.tokenizer, int(st.max_seq_length or 512)
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_len)["input_ids"]]
    buckets: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        buckets.setdefault(min(max_len, -(-n // TEXT_LENGTH_STEP) * TEXT_LENGTH_STEP), []).append(i)
    out: np.ndarray | None = None
    with torch.inference_mode():
        for length, idx in sorted(buckets.items()):
            for start in range(0, len(idx), rows):
                part = idx[start:start + rows]
                batch = [texts[i] for i in part]
                batch += [batch[0]] * (rows - len(batch))
                feats = tok(batch, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
                feats = {k: v.to(device) for k, v in feats.items()}
                vecs = st(feats)["sentence_embedding"][:len(part)].float().cpu().numpy()
                if out is None:
                    out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
                out[part] = vecs
    assert out is not None
    return out
