"""Model presets: the GptOss configs in data/presets/*.json used by `synthetic:<preset>` model sources.

A preset file is a transformers config dict (the form of a checkpoint's config.json). Keys starting with `_`
(e.g. `_note`) are documentation and are dropped. `attn_implementation` / `experts_implementation` in the file
become the config's implementation choices (eager attention: gpt-oss attention sinks rule out sdpa;
grouped_mm experts: batched_mm copies weights per token and runs out of memory at full size).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.errors import BadInputError
from bench.paths import PRESETS_DIR


def list_presets(presets_dir: Path = PRESETS_DIR) -> list[str]:
    """Names of the presets available (file stems in data/presets/), sorted."""
    if not presets_dir.is_dir():
        return []
    return sorted(p.stem for p in presets_dir.glob("*.json"))


def check_preset_name(name: str, presets_dir: Path = PRESETS_DIR) -> str:
    """`name` must be the stem of a file in `presets_dir`: a plain name, never a path (`synthetic:/tmp/x` and
    `synthetic:../x` are refused before any file is opened)."""
    available = list_presets(presets_dir)
    if name not in available:
        shown = ", ".join(available) or "(none)"
        raise BadInputError(
            f"model preset {name!r} not found in {presets_dir}; available presets: {shown}. "
            f"Use synthetic:<preset> with one of those (a name, not a path), or add a .json file there"
        )
    return name


def preset_dict(name: str, presets_dir: Path = PRESETS_DIR) -> dict[str, Any]:
    """The raw config dict of a preset, without `_`-prefixed documentation keys."""
    check_preset_name(name, presets_dir)
    path = presets_dir / f"{name}.json"
    if not path.is_file():
        available = ", ".join(list_presets(presets_dir)) or "(none)"
        raise BadInputError(
            f"model preset {name!r} not found in {presets_dir}; available presets: {available}. "
            f"Use synthetic:<preset> with one of those, or add {name}.json there"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BadInputError(f"preset file {path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise BadInputError(f"preset file {path} must hold a JSON object (a transformers config dict)")
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def load_preset_config(name: str, presets_dir: Path = PRESETS_DIR):  # -> transformers.GptOssConfig
    """Build the transformers config of a preset (GptOssConfig for gpt_oss presets)."""
    from transformers import AutoConfig

    raw = preset_dict(name, presets_dir)
    model_type = raw.pop("model_type", "gpt_oss")
    raw.pop("transformers_version", None)
    try:
        return AutoConfig.for_model(model_type, **raw)
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"preset {name!r}: transformers rejected the config: {exc}") from exc
