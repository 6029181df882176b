"""Expert pruning for gpt-oss-style MoE models: keep sets, slicing experts + router, and top_k on every router.

Keep sets are `list[list[int]]`: per layer, the sorted expert indices kept. They come from a method
(first | random | frequency), a keep file (data/keep/*.json), or the per-layer union of several keep files,
trimmed or filled to N experts by routing frequency. `prune_model` slices, per layer and together, the experts'
gate_up_proj, gate_up_proj_bias, down_proj, down_proj_bias and the router's weight rows and bias, and sets
num_experts on the modules and num_local_experts on the config (Hugging Face configs hold one expert count,
so every layer keeps the same number). `apply_variant` is what the worker calls.

Routing frequency is counted through forward hooks on the routers over a calibration batch of seeded random
token ids (no tokenizer or corpus is needed, so it works for synthetic and real models alike).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from bench.errors import BadInputError

PRUNE_METHODS: tuple[str, ...] = ("first", "random", "frequency")
CALIBRATION_BATCH = 4
CALIBRATION_LEN = 64


# ---------------------------------------------------------------- model structure


def moe_layers(model: Any) -> list[tuple[Any, Any]]:
    """(router, experts) per decoder layer, in layer order. Raises BadInputError if the model has no MoE."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    out = []
    for layer in layers or []:
        mlp = getattr(layer, "mlp", None)
        router, experts = getattr(mlp, "router", None), getattr(mlp, "experts", None)
        if router is not None and experts is not None:
            out.append((router, experts))
    if not out:
        raise BadInputError(
            f"model {type(model).__name__} has no MoE layers with mlp.router/mlp.experts; "
            "pruning and top_k need a gpt-oss-style model"
        )
    return out


def set_top_k(model: Any, k: int) -> int:
    """Set top_k on EVERY router module and on config.num_experts_per_tok. Returns the number of routers set."""
    layers = moe_layers(model)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise BadInputError(f"top_k must be a positive integer, got {k!r}")
    for i, (router, _) in enumerate(layers):
        if k > router.num_experts:
            raise BadInputError(f"top_k {k} is greater than the {router.num_experts} experts of layer {i}; lower top_k")
    for router, _ in layers:
        router.top_k = k
    model.config.num_experts_per_tok = k
    return len(layers)


# ---------------------------------------------------------------- keep-set selection


def _check_count(experts: int, num_experts: int, where: str = "experts") -> None:
    if isinstance(experts, bool) or not isinstance(experts, int) or not 1 <= experts <= num_experts:
        raise BadInputError(f"{where}: must be between 1 and the model's {num_experts} experts, got {experts!r}")


def _top_by_frequency(candidates: list[int], n: int, freq_row: list[float]) -> list[int]:
    """The n candidates routed most often (ties: lower index first)."""
    return sorted(candidates, key=lambda e: (-freq_row[e], e))[:n]


def _freq_rows(frequency: Any, num_layers: int, num_experts: int) -> list[list[float]]:
    rows = frequency.tolist() if hasattr(frequency, "tolist") else [list(r) for r in frequency]
    if len(rows) != num_layers or any(len(r) != num_experts for r in rows):
        raise ValueError(f"frequency must be [{num_layers} layers, {num_experts} experts]")
    return [[float(x) for x in r] for r in rows]


def select_keep(
    num_layers: int,
    num_experts: int,
    experts: int,
    method: str,
    seed: int,
    frequency: Any = None,
) -> list[list[int]]:
    """Keep `experts` of `num_experts` per layer: first (0..N-1), random (seeded per layer) or frequency
    (the N most routed per layer; `frequency` is a [layers, experts] tensor or nested list)."""
    _check_count(experts, num_experts)
    if method == "first":
        return [list(range(experts)) for _ in range(num_layers)]
    if method == "random":
        return [
            sorted(random.Random(f"{seed}:{layer}").sample(range(num_experts), experts)) for layer in range(num_layers)
        ]
    if method == "frequency":
        if frequency is None:
            raise BadInputError("prune method 'frequency' needs routing frequencies (run routing_frequency first)")
        rows = _freq_rows(frequency, num_layers, num_experts)
        return [sorted(_top_by_frequency(list(range(num_experts)), experts, rows[i])) for i in range(num_layers)]
    raise BadInputError(f"prune method {method!r}: must be one of {', '.join(PRUNE_METHODS)}")


def synthetic_domain_keep(num_layers: int, num_experts: int, experts: int, seed: int) -> list[list[int]]:
    """A stand-in for a keep set chosen on one calibration domain: per layer, `experts` indices drawn without
    replacement, weighted by a Zipf-like popularity shared by all domains (from layer-only RNG) so that two
    domains overlap more than chance, as real per-domain keep sets do. Deterministic from (seed, layer)."""
    _check_count(experts, num_experts)
    out = []
    for layer in range(num_layers):
        order = list(range(num_experts))
        random.Random(f"popularity:{layer}").shuffle(order)  # shared across domains
        weight = {e: 1.0 / (rank + 1) ** 0.5 for rank, e in enumerate(order)}
        rng = random.Random(f"domain:{seed}:{layer}")
        pool, chosen = list(range(num_experts)), []
        for _ in range(experts):
            pick = rng.choices(pool, weights=[weight[e] for e in pool])[0]
            pool.remove(pick)
            chosen.append(pick)
        out.append(sorted(chosen))
    return out


def calibration_input_ids(vocab_size: int, seed: int, batch: int = CALIBRATION_BATCH, seq_len: int = CALIBRATION_LEN):
    """Seeded random token ids [batch, seq_len] (CPU tensor) for routing-frequency calibration."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_len), generator=gen)


def routing_frequency(model: Any, input_ids: Any):
    """Tokens routed to each expert, per layer: an int64 CPU tensor [layers, experts], counted by forward hooks
    on the routers during one forward pass of `input_ids` (top_k choices per token all count)."""
    import torch

    layers = moe_layers(model)
    counts = torch.zeros(len(layers), max(r.num_experts for r, _ in layers), dtype=torch.int64)
    handles = []

    def hook_for(i: int, n: int):
        def hook(_module, _inputs, output):
            indices = output[-1]  # (router_logits, router_scores, router_indices)
            counts[i, :n] += torch.bincount(indices.reshape(-1).to("cpu", torch.int64), minlength=n)[:n]

        return hook

    for i, (router, _) in enumerate(layers):
        handles.append(router.register_forward_hook(hook_for(i, router.num_experts)))
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(input_ids=input_ids.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return counts


# ---------------------------------------------------------------- keep files and unions


def _validate_keep(layers: Any, where: str, num_layers: int | None, num_experts: int | None) -> list[list[int]]:
    if not isinstance(layers, list) or not layers:
        raise BadInputError(f"{where}: must hold a non-empty list of per-layer expert lists")
    if num_layers is not None and len(layers) != num_layers:
        raise BadInputError(
            f"{where}: has {len(layers)} layers but the model has {num_layers}; give one expert list per layer"
        )
    out: list[list[int]] = []
    for i, row in enumerate(layers):
        if not isinstance(row, list) or not row:
            raise BadInputError(f"{where}: layer {i} must be a non-empty list of expert indices, got {row!r}")
        for e in row:
            if isinstance(e, bool) or not isinstance(e, int):
                raise BadInputError(f"{where}: layer {i} has a non-integer expert index {e!r}")
            if e < 0 or (num_experts is not None and e >= num_experts):
                limit = f"0..{num_experts - 1}" if num_experts is not None else ">= 0"
                raise BadInputError(f"{where}: layer {i} has expert index {e} out of range ({limit})")
        dupes = sorted({e for e in row if row.count(e) > 1})
        if dupes:
            raise BadInputError(f"{where}: layer {i} lists expert(s) {dupes} more than once")
        out.append(sorted(row))
    return out


def load_keep_file(path: str | Path, num_layers: int | None = None, num_experts: int | None = None) -> list[list[int]]:
    """Read a keep file: {"layers": [[...], ...], ...} or a bare list of lists. Validates that every layer is
    present (when num_layers is given) and indices are unique integers in range; each layer comes back sorted."""
    p = Path(path)
    where = f"keep file {p}"
    if not p.is_file():
        raise BadInputError(f"{where} not found; create it or fix the path (examples in data/keep/)")
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{where} is not valid JSON: {exc}") from exc
    if isinstance(raw, dict):
        if "layers" not in raw:
            raise BadInputError(f'{where}: missing "layers"; write {{"layers": [[0, 3, ...], ...]}}')
        raw = raw["layers"]
    return _validate_keep(raw, where, num_layers, num_experts)


def write_keep_file(path: str | Path, keep: list[list[int]], **meta: Any) -> None:
    """Write a keep file: metadata keys (e.g. note, model, seed) then "layers", one layer per line."""
    head = "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in meta.items())
    rows = ",\n".join(f"    {json.dumps(row)}" for row in keep)
    Path(path).write_text("{\n" + head + '  "layers": [\n' + rows + "\n  ]\n}\n")


def union_keep(
    sets: list[list[list[int]]], experts: int, frequency: Any = None, num_experts: int | None = None
) -> list[list[int]]:
    """Per layer, the union of several keep sets, trimmed (drop the least routed) or filled (add the most routed
    not yet kept) to exactly `experts`, sorted. Ranking: routing frequency (a [layers, experts] tensor or nested
    list), then the number of sets listing the expert, then the lower index. num_experts defaults to the
    frequency's width, else the highest index seen + 1."""
    if not sets:
        raise BadInputError("union: give at least one keep set")
    num_layers = len(sets[0])
    if any(len(s) != num_layers for s in sets):
        raise BadInputError(f"union: keep sets have different layer counts {[len(s) for s in sets]}")
    rows = None
    if frequency is not None:
        rows = frequency.tolist() if hasattr(frequency, "tolist") else [list(r) for r in frequency]
        if len(rows) != num_layers:
            raise ValueError(f"frequency has {len(rows)} layers, keep sets have {num_layers}")
    if num_experts is None:
        num_experts = len(rows[0]) if rows is not None else max(max(row) for s in sets for row in s) + 1
    _check_count(experts, num_experts, "union experts")
    out = []
    for layer in range(num_layers):
        votes = [sum(e in s[layer] for s in sets) for e in range(num_experts)]
        freq = [float(x) for x in rows[layer]] if rows is not None else [0.0] * num_experts

        def rank(e: int, freq: list[float] = freq, votes: list[int] = votes) -> tuple[float, int, int]:
            return (-freq[e], -votes[e], e)

        union = sorted({e for s in sets for e in s[layer]})
        if len(union) > experts:
            kept = sorted(union, key=rank)[:experts]
        else:
            rest = [e for e in range(num_experts) if e not in union]
            kept = union + sorted(rest, key=rank)[: experts - len(union)]
        out.append(sorted(kept))
    return out


# ---------------------------------------------------------------- slicing and masking


def _check_keep_for_model(model: Any, keep: list[list[int]]) -> list[tuple[Any, Any]]:
    layers = moe_layers(model)
    if len(keep) != len(layers):
        raise BadInputError(f"keep set has {len(keep)} layers but the model has {len(layers)} MoE layers")
    _validate_keep([list(r) for r in keep], "keep set", len(layers), min(r.num_experts for r, _ in layers))
    counts = sorted({len(r) for r in keep})
    if len(counts) != 1:
        raise BadInputError(
            f"keep set: every layer must keep the same number of experts (Hugging Face configs hold one "
            f"expert count); got counts {counts}"
        )
    return layers


def prune_model(model: Any, keep: list[list[int]]) -> None:
    """Slice, per layer, the experts' weights and biases and the router's rows to the kept experts (in the
    sorted order given), and set num_experts on the modules and num_local_experts on the config."""
    import torch

    layers = _check_keep_for_model(model, keep)
    n = len(keep[0])
    for i, (router, experts) in enumerate(layers):
        if not hasattr(experts, "gate_up_proj"):
            raise BadInputError(
                f"layer {i}: experts of type {type(experts).__name__} are quantized and cannot be sliced; "
                "load the model dequantized (mxfp4 -> bf16) before pruning"
            )
        if router.top_k > n:
            raise BadInputError(f"top_k {router.top_k} is greater than the {n} experts kept; lower top_k first")
        idx = torch.tensor(sorted(keep[i]), dtype=torch.long, device=router.weight.device)
        with torch.no_grad():
            for mod, names in (
                (experts, ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias")),
                (router, ("weight", "bias")),
            ):
                for name in names:
                    param = getattr(mod, name, None)
                    if param is None:
                        continue
                    sliced = param.data.index_select(0, idx.to(param.device)).contiguous()
                    setattr(mod, name, torch.nn.Parameter(sliced, requires_grad=param.requires_grad))
        experts.num_experts = n
        router.num_experts = n
    model.config.num_local_experts = n
    if torch.cuda.is_available() and any(p.is_cuda for p in model.parameters()):
        torch.cuda.empty_cache()  # hand the dropped experts back, so reserved memory reflects the pruned model


def mask_router(model: Any, keep: list[list[int]]) -> None:
    """Make every expert outside `keep` unroutable (router bias -inf). The model then computes what the pruned
    model computes; used by tests as the reference for pruning."""
    import torch

    layers = moe_layers(model)
    if len(keep) != len(layers):
        raise BadInputError(f"keep set has {len(keep)} layers but the model has {len(layers)} MoE layers")
    with torch.no_grad():
        for (router, _), row in zip(layers, keep, strict=True):
            mask = torch.ones(router.num_experts, dtype=torch.bool, device=router.bias.device)
            mask[list(row)] = False
            router.bias[mask] = float("-inf")


# ---------------------------------------------------------------- the worker's entry point


def resolve_keep(loaded: Any, prune: Any, seed: int) -> tuple[list[list[int]], str]:
    """The keep set a PruneSpec asks for on this model, and a note saying how it was chosen."""
    cfg = loaded.config
    num_layers, num_experts = len(moe_layers(loaded.model)), int(cfg.num_local_experts)
    kind = prune.kind
    if kind == "resolved":  # chosen from stored calibrations by the bench process (bench.calibrated)
        return _validate_keep(prune.keep_layers, "calibrated keep set", num_layers, num_experts), str(prune.note)
    if kind == "calibrated":
        raise BadInputError("a calibrated prune (domains) must be resolved against the database first")
    if kind == "keep":
        keep = load_keep_file(prune.keep, num_layers, num_experts)
        return keep, f"kept experts from {Path(prune.keep).name}"
    if kind == "union":
        sets = [load_keep_file(f, num_layers, num_experts) for f in prune.union]
        freq = routing_frequency(loaded.model, calibration_input_ids(cfg.vocab_size, seed))
        names = ", ".join(Path(f).name for f in prune.union)
        keep = union_keep(sets, int(prune.experts), freq, num_experts)
        return keep, f"union of {names} trimmed/filled to {prune.experts} by routing frequency (seeded random tokens)"
    method = prune.method or "first"
    freq = None
    if method == "frequency":
        _check_count(prune.experts, num_experts)
        freq = routing_frequency(loaded.model, calibration_input_ids(cfg.vocab_size, seed))
    keep = select_keep(num_layers, num_experts, int(prune.experts), method, seed, freq)
    if method == "frequency":
        return keep, (f"kept the {prune.experts} most-routed experts per layer, routing counted over seeded random "
                      f"token ids (random-token calibration, seed {seed}; not text)")
    return keep, f"kept {prune.experts} experts per layer by method {method}"


def apply_variant(loaded: Any, prune: Any, top_k: int, seed: int) -> list[list[int]] | None:
    """Resolve the keep set of `prune` (a bench.spec.PruneSpec, or None for the base model), prune the model in
    place, set top_k on every router, and return the kept experts per layer (None when not pruned)."""
    if prune is None:
        set_top_k(loaded.model, top_k)
        return None
    keep, note = resolve_keep(loaded, prune, seed)
    n = len(keep[0])
    if top_k > n:
        raise BadInputError(f"top_k {top_k} is greater than the {n} experts kept; lower top_k or keep more experts")
    set_top_k(loaded.model, top_k)
    prune_model(loaded.model, keep)
    loaded.notes.append(note)
    return keep
