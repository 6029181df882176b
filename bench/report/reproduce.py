"""The "## Reproduce" block of an exported report: a sweep spec (TOML, written by a heredoc) plus our command.

Runs that share prompt_len / new_tokens / engine / dtype / device / repeats / seed go into one spec;
differing groups get one spec file each. Imported runs contribute only what their report states.
"""

from __future__ import annotations

import json
from typing import Any

from bench.records import RunRecord
from bench.spec import DEVICES, DTYPES, ENGINE_NAMES


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def _settings(run: RunRecord) -> tuple[tuple[str, Any], ...]:
    measured = not run.source.startswith("imported:")
    items: list[tuple[str, Any]] = [("prompt_len", run.prompt_len), ("new_tokens", run.new_tokens)]
    if measured or run.repeats > 1:
        items.append(("repeats", run.repeats))
    if run.engine in ENGINE_NAMES:
        items.append(("engine", run.engine))
    if run.dtype in DTYPES:
        items.append(("dtype", run.dtype))
    if run.device in DEVICES:
        items.append(("device", run.device))
    if measured:
        items.append(("seed", run.seed))
    return tuple(items)


def spec_toml(title: str, settings: tuple[tuple[str, Any], ...], batches: list[int], runs: list[RunRecord]) -> str:
    lines = [f"title = {_toml_value(title)}", "", "[sweep]"]
    for key, value in settings[:2]:
        lines.append(f"{key} = {_toml_value(value)}")
    lines.append(f"batch_sizes = {_toml_value(batches)}")
    for key, value in settings[2:]:
        lines.append(f"{key} = {_toml_value(value)}")
    for run in runs:
        lines += ["", "[[variants]]", f"name = {_toml_value(run.name)}", f"model = {_toml_value(run.model)}"]
        lines.append(f"top_k = {run.top_k}")
        if run.prune:
            lines.append(f"prune = {_toml_value(run.prune)}")
    return "\n".join(lines)


def reproduce_script(runs: list[RunRecord], title: str, batches_by_run: dict[str, list[int]] | None = None) -> str:
    """Bash that writes the spec(s) and runs `python -m bench sweep --spec ...`."""
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(_settings(run), []).append(run)
    if not groups:
        return "python -m bench sweep --spec data/specs/tiny-cpu.toml"
    blocks = []
    for i, (settings, members) in enumerate(groups.items()):
        batches = sorted(
            {b for r in members for b in (batches_by_run or {}).get(r.run_id, [])}
        ) or _batches_from_config(members)
        name = "sweep.toml" if len(groups) == 1 else f"sweep-{i + 1}.toml"
        blocks.append(
            f"cat > {name} <<'EOF'\n{spec_toml(title, settings, batches, members)}\nEOF\n"
            f"python -m bench sweep --spec {name}"
        )
    return "\n\n".join(blocks)


def _batches_from_config(runs: list[RunRecord]) -> list[int]:
    out: set[int] = set()
    for run in runs:
        try:
            cfg = json.loads(run.config_json or "{}")
        except ValueError:
            continue
        sweep = cfg.get("sweep") if isinstance(cfg, dict) else None
        values = sweep.get("batch_sizes") if isinstance(sweep, dict) else None
        if isinstance(values, list):
            out.update(v for v in values if isinstance(v, int))
    return sorted(out) or [1]
