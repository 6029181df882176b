"""Keep sets chosen from calibrations (routing statistics of real text per domain). Pure Python: no torch, no
duckdb, so the bench process computes the keep set and the worker only slices (bench.models.pruning).

Criteria, per layer (ties: lower expert index first):
- frequency: the N experts routed the most tokens (NAEE-style frequency baseline); several domains pool their
  counts (sum).
- reap:      the N experts with the highest REAP saliency (Lasby et al. 2025): mean over the tokens routed to an
  expert of routing weight × ||expert output||; several domains pool it as the token-weighted mean
  Σ_d saliency_d·n_d / Σ_d n_d.
- union:     each domain's own top-`per_domain` set (by `rank`: saliency or frequency, default per_domain = N),
  their union, trimmed (drop the lowest pooled score) or filled (add the highest pooled score not yet kept) to
  exactly N. This is how the reference report's union50/unionAgg variants are built from two domains.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import BadInputError

CRITERIA: tuple[str, ...] = ("frequency", "reap", "union")
RANKS: tuple[str, ...] = ("saliency", "frequency")


@dataclass
class CalibrationData:
    """One stored calibration: a model over one domain's text."""

    calibration_id: str
    domain: str
    model: str
    model_fingerprint: str
    text_hash: str
    tokenizer: str
    tokens: int
    tokens_routed: list[list[int]]  # [layer][expert]
    saliency: list[list[float | None]]  # [layer][expert], None where no token was routed / not measured

    @property
    def layers(self) -> int:
        return len(self.tokens_routed)

    @property
    def experts(self) -> int:
        return len(self.tokens_routed[0]) if self.tokens_routed else 0


@dataclass
class KeepChoice:
    keep: list[list[int]]
    note: str


def _check(cals: list[CalibrationData], n: int) -> tuple[int, int]:
    if not cals:
        raise BadInputError("calibrated prune: name at least one calibration domain")
    layers, experts = cals[0].layers, cals[0].experts
    for c in cals[1:]:
        if (c.layers, c.experts) != (layers, experts):
            raise BadInputError(
                f"calibrations {cals[0].domain!r} and {c.domain!r} have different shapes "
                f"({layers}x{experts} vs {c.layers}x{c.experts}); calibrate the same model"
            )
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= experts:
        raise BadInputError(f"prune.experts: must be between 1 and the model's {experts} experts, got {n!r}")
    return layers, experts


def pooled_frequency(cals: list[CalibrationData]) -> list[list[float]]:
    layers, experts = cals[0].layers, cals[0].experts
    return [[float(sum(c.tokens_routed[li][e] for c in cals)) for e in range(experts)] for li in range(layers)]


def pooled_saliency(cals: list[CalibrationData]) -> list[list[float]]:
    """Token-weighted mean saliency over the domains (0 for an expert no token was routed to)."""
    layers, experts = cals[0].layers, cals[0].experts
    out = []
    for li in range(layers):
        row = []
        for e in range(experts):
            num = den = 0.0
            for c in cals:
                n, s = c.tokens_routed[li][e], c.saliency[li][e]
                if n and s is not None:
                    num += s * n
                    den += n
            row.append(num / den if den else 0.0)
        out.append(row)
    return out


def _needs_saliency(cals: list[CalibrationData], what: str) -> None:
    for c in cals:
        if any(n and s is None for rs, rn in zip(c.saliency, c.tokens_routed, strict=True)
               for s, n in zip(rs, rn, strict=True)):
            raise BadInputError(
                f"{what}: calibration {c.domain!r} has no saliency (experts ran through MXFP4 kernels); "
                "recalibrate with dequantized weights or rank by frequency"
            )


def top_n(scores: list[float], n: int) -> list[int]:
    """The n highest-scoring indices (ties: lower index first), sorted."""
    return sorted(sorted(range(len(scores)), key=lambda e: (-scores[e], e))[:n])


def _describe(cals: list[CalibrationData]) -> str:
    return ", ".join(f"{c.domain} (calibration {c.calibration_id}, text {c.text_hash}, {c.tokens} tokens, "
                     f"tokenizer {c.tokenizer})" for c in cals)


def choose_keep(
    cals: list[CalibrationData], criterion: str, n: int, rank: str = "saliency", per_domain: int | None = None
) -> KeepChoice:
    """The keep set of `criterion` over the calibrations, with a note saying exactly how it was chosen."""
    layers, experts = _check(cals, n)
    src = _describe(cals)
    pooled = "pooled over " if len(cals) > 1 else "from "
    if criterion == "frequency":
        freq = pooled_frequency(cals)
        return KeepChoice([top_n(freq[li], n) for li in range(layers)],
                          f"kept the {n} most-routed experts per layer (routing frequency) {pooled}{src}")
    if criterion == "reap":
        _needs_saliency(cals, "reap")
        sal = pooled_saliency(cals)
        return KeepChoice([top_n(sal[li], n) for li in range(layers)],
                          f"kept the {n} experts per layer with the highest REAP saliency (mean routing weight × "
                          f"||expert output||) {pooled}{src}")
    if criterion == "union":
        if rank not in RANKS:
            raise BadInputError(f"prune.rank: must be one of {', '.join(RANKS)}, got {rank!r}")
        m = n if per_domain is None else per_domain
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= experts:
            raise BadInputError(f"prune.per_domain: must be between 1 and {experts}, got {m!r}")
        if rank == "saliency":
            _needs_saliency(cals, "union ranked by saliency")
            per = [pooled_saliency([c]) for c in cals]
            score = pooled_saliency(cals)
        else:
            per = [pooled_frequency([c]) for c in cals]
            score = pooled_frequency(cals)
        keep = []
        for li in range(layers):
            union = sorted({e for p in per for e in top_n(p[li], m)})
            order = sorted(range(experts), key=lambda e: (-score[li][e], e))
            if len(union) > n:
                kept = [e for e in order if e in union][:n]
            else:
                kept = union + [e for e in order if e not in union][: n - len(union)]
            keep.append(sorted(kept))
        return KeepChoice(keep, f"union of the per-domain top-{m} sets by {rank}, trimmed/filled to {n} experts "
                                f"per layer by pooled {rank}; domains: {src}")
    raise BadInputError(f"prune.method: {criterion!r} is not a calibrated criterion ({', '.join(CRITERIA)})")
