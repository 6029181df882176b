"""Text -> token ids for a loaded model: its own tokenizer, or for synthetic presets (which have none) a
documented deterministic byte-level mapping.

Byte-level mapping (synthetic presets only): the text's UTF-8 bytes b0, b1, ... become token ids
b0 mod V, b1 mod V, ... (V = the model's vocab_size). It is labelled `byte-level (synthetic: UTF-8 byte mod
vocab)` wherever a calibration or quality figure records its tokenizer: it is not how a trained model would see
the text, only a deterministic way to feed text-shaped input to random weights.

Worker-side: imports torch/transformers lazily, never duckdb or streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.errors import BadInputError

BYTE_LEVEL_LABEL = "byte-level (synthetic: UTF-8 byte mod vocab)"


@dataclass
class TextTokenizer:
    """encode(text, limit) -> list of ids (at most `limit`); `label` says which tokenizer it is."""

    label: str
    vocab_size: int
    _hf: Any = None

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        if self._hf is None:
            data = text.encode("utf-8", "surrogatepass")
            if limit is not None:
                data = data[:limit]
            return [b % self.vocab_size for b in data]
        # tokenize in slices, so a budget of N tokens never tokenizes megabytes of text
        out: list[int] = []
        step = 200_000
        for start in range(0, len(text), step):
            out.extend(self._hf.encode(text[start : start + step], add_special_tokens=False))
            if limit is not None and len(out) >= limit:
                return out[:limit]
        return out


def tokenizer_for(loaded: Any) -> TextTokenizer:
    """The model's own tokenizer (AutoTokenizer over its source), or the byte-level mapping for synthetic presets."""
    vocab = int(loaded.config.vocab_size)
    if loaded.synthetic:
        return TextTokenizer(label=BYTE_LEVEL_LABEL, vocab_size=vocab)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(loaded.source)
    except (OSError, ValueError) as exc:
        raise BadInputError(
            f"model {loaded.source!r} has no tokenizer that transformers can load ({exc}); "
            "calibration and quality need the model's own tokenizer"
        ) from exc
    return TextTokenizer(label=f"own ({type(tok).__name__})", vocab_size=vocab, _hf=tok)


def chunk_ids(ids: list[int], seq_len: int) -> list[list[int]]:
    """Consecutive full chunks of `seq_len` ids, plus the remainder when it is at least 2 long."""
    chunks = [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
    return [c for c in chunks if len(c) >= 2]


def prompt_ids(tokenizer: TextTokenizer, text: str, batch: int, prompt_len: int, device: str):
    """[batch, prompt_len] prompts cut from consecutive stretches of `text` (wrapping round when short)."""
    import torch

    need = batch * prompt_len
    ids = tokenizer.encode(text, need)
    if not ids:
        raise BadInputError("prompts: the domain's held-out text produced no tokens; use a longer text")
    while len(ids) < need:
        ids = ids + ids[: need - len(ids)]
    return torch.tensor(ids[:need], dtype=torch.long).reshape(batch, prompt_len).to(device)
