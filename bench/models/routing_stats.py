"""Routing statistics of a model over token ids, per MoE layer and expert: what `bench calibrate` records.

For every token and each of its top-k experts e (the router's own choice, read from the experts module's inputs
through a forward hook):
- tokens_routed[e] += 1
- weight_sum[e]    += g_e(x)                  the routing weight (gpt-oss: softmax over the top-k logits)
- saliency_sum[e]  += g_e(x) * ||f_e(x)||_2   REAP (Lasby et al. 2025): f_e(x) is expert e's output for x
mean_weight = weight_sum / tokens_routed and saliency = saliency_sum / tokens_routed (the REAP score: the average
over the tokens routed to the expert). Expert outputs are recomputed from the experts' weights (gate_up_proj,
down_proj and biases, the module's own gate function); experts without plain weights (MXFP4 kernels) get no
saliency (None).

Worker-side: imports torch lazily, never duckdb or streamlit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.models.pruning import moe_layers


@dataclass
class RoutingStats:
    """Per layer and expert sums over `tokens` tokens: plain nested lists, so it pickles and stores easily."""

    tokens: int
    top_k: int
    tokens_routed: list[list[int]]
    weight_sum: list[list[float]]
    saliency_sum: list[list[float]] | None

    @property
    def layers(self) -> int:
        return len(self.tokens_routed)

    @property
    def experts(self) -> int:
        return len(self.tokens_routed[0]) if self.tokens_routed else 0

    def mean_weight(self, layer: int, expert: int) -> float | None:
        n = self.tokens_routed[layer][expert]
        return self.weight_sum[layer][expert] / n if n else None

    def saliency(self, layer: int, expert: int) -> float | None:
        n = self.tokens_routed[layer][expert]
        if self.saliency_sum is None or not n:
            return None
        return self.saliency_sum[layer][expert] / n


def expert_output(experts: Any, e: int, x: Any) -> Any:
    """f_e(x): expert e of a gpt-oss experts module applied to x [n, hidden] (no routing weight)."""
    gate_up = x @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e]
    return experts._apply_gate(gate_up) @ experts.down_proj[e] + experts.down_proj_bias[e]


class _Accumulator:
    def __init__(self, n_layers: int, n_experts: int, saliency: bool) -> None:
        import torch

        self.count = torch.zeros(n_layers, n_experts, dtype=torch.float64)
        self.weight = torch.zeros(n_layers, n_experts, dtype=torch.float64)
        self.sal = torch.zeros(n_layers, n_experts, dtype=torch.float64) if saliency else None

    def add(self, layer: int, experts: Any, hidden: Any, indices: Any, weights: Any) -> None:
        import torch

        n = experts.num_experts
        flat_idx = indices.reshape(-1).to(torch.int64)
        flat_w = weights.reshape(-1).to(torch.float64)
        self.count[layer, :n] += torch.bincount(flat_idx, minlength=n)[:n].to("cpu", torch.float64)
        self.weight[layer, :n] += torch.zeros(n, dtype=torch.float64, device=flat_w.device).index_add_(
            0, flat_idx, flat_w).cpu()
        if self.sal is None:
            return
        k = indices.shape[-1]
        with torch.no_grad():
            for e in torch.unique(flat_idx).tolist():
                pos = (flat_idx == e).nonzero().squeeze(1)
                tok = pos // k
                out = expert_output(experts, e, hidden[tok])
                self.sal[layer, e] += (flat_w[pos] * out.float().norm(dim=-1).to(torch.float64)).sum().cpu()


def collect_routing(
    model: Any,
    chunks: list[list[int]],
    batch: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> RoutingStats:
    """Run `model` over `chunks` (token-id lists; `batch` equal-length chunks per forward) and sum the routing
    statistics of every MoE layer. `progress(done_tokens, total_tokens)` is called after every forward."""
    import torch

    layers = moe_layers(model)
    n_experts = max(r.num_experts for r, _ in layers)
    saliency = all(hasattr(ex, "gate_up_proj") and hasattr(ex, "_apply_gate") for _, ex in layers)
    acc = _Accumulator(len(layers), n_experts, saliency)
    handles = []

    def hook_for(i: int):
        def hook(module, args, kwargs, _output):
            names = ("hidden_states", "router_indices", "routing_weights")
            values = list(args) + [kwargs.get(n) for n in names[len(args):]]
            hidden, indices, weights = values[:3]
            acc.add(i, module, hidden, indices, weights)

        return hook

    for i, (_, experts) in enumerate(layers):
        handles.append(experts.register_forward_hook(hook_for(i), with_kwargs=True))
    device = next(model.parameters()).device
    total = sum(len(c) for c in chunks)
    done = 0
    try:
        with torch.no_grad():
            i = 0
            while i < len(chunks):
                size = len(chunks[i])
                group = [chunks[i]]
                while len(group) < batch and i + len(group) < len(chunks) and len(chunks[i + len(group)]) == size:
                    group.append(chunks[i + len(group)])
                ids = torch.tensor(group, dtype=torch.long, device=device)
                model(input_ids=ids, use_cache=False)
                i += len(group)
                done += size * len(group)
                if progress is not None:
                    progress(done, total)
    finally:
        for h in handles:
            h.remove()
    to_int = [[round(x) for x in row] for row in acc.count.tolist()]
    return RoutingStats(
        tokens=total,
        top_k=int(layers[0][0].top_k),
        tokens_routed=to_int,
        weight_sum=acc.weight.tolist(),
        saliency_sum=acc.sal.tolist() if acc.sal is not None else None,
    )
