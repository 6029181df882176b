"""How far a variant's outputs moved from its base's, on held-out token ids.

Over every position t of every chunk (predicting token t+1 from the tokens up to t):
- kl:             mean KL(base ‖ variant) = Σ_v p_base(v) (log p_base(v) − log p_variant(v)), in nats;
- top1_agreement: the share of positions where the two models' most likely next token is the same;
- perplexity / base_perplexity: exp(mean negative log-likelihood of the actual next token) for the variant and
  the base. Meaningful only for trained weights: on synthetic (random) weights it measures nothing about
  language; KL and agreement are meaningful for any weights (they measure how far pruning moved the outputs).
Log-softmax is taken in float32 whatever the model's dtype.

Worker-side: imports torch lazily, never duckdb or streamlit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

QUALITY_METRICS: tuple[str, ...] = ("kl", "top1_agreement", "perplexity", "base_perplexity")


@dataclass
class QualityResult:
    """One domain's figures; `tokens` is the number of positions compared."""

    domain: str
    values: dict[str, float]
    tokens: int
    seconds: float
    tokenizer: str
    text_hash: str | None = None  # the domain text whose held-out tail was read


def _logprobs(model: Any, ids: Any) -> Any:
    import torch

    out = model(input_ids=ids, use_cache=False)
    return torch.log_softmax(out.logits[:, :-1, :].float(), dim=-1)


def compare_outputs(
    base: Any, variant: Any, chunks: list[list[int]], progress: Callable[[int, int], None] | None = None
) -> tuple[dict[str, float], int]:
    """(metrics, positions) of `variant` against `base` over the chunks (one chunk per forward)."""
    import torch

    device = next(variant.parameters()).device
    kl_sum = agree = nll_var = nll_base = 0.0
    n = 0
    total = sum(len(c) - 1 for c in chunks)
    with torch.no_grad():
        for chunk in chunks:
            ids = torch.tensor([chunk], dtype=torch.long, device=device)
            lp_b = _logprobs(base, ids.to(next(base.parameters()).device)).to(device)
            lp_v = _logprobs(variant, ids)
            target = ids[:, 1:].unsqueeze(-1)
            kl = (lp_b.exp() * (lp_b - lp_v)).sum(-1)
            kl_sum += float(kl.clamp_min(0).sum())
            agree += float((lp_b.argmax(-1) == lp_v.argmax(-1)).sum())
            nll_var -= float(lp_v.gather(-1, target).sum())
            nll_base -= float(lp_b.gather(-1, target).sum())
            n += target.numel()
            if progress is not None:
                progress(n, total)
    if n == 0:
        return {}, 0
    values = {
        "kl": kl_sum / n,
        "top1_agreement": agree / n,
        "perplexity": math.exp(min(nll_var / n, 700.0)),
        "base_perplexity": math.exp(min(nll_base / n, 700.0)),
    }
    return values, n
