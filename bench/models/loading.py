"""Model sources: `synthetic:<preset>` (seeded random weights built on the target device), a local checkpoint
directory, or a Hugging Face id (transformers' own from_pretrained, offline from the cache with HF_HUB_OFFLINE=1).

`resolve_config` reads a config without building weights; `load_model` builds/loads the model in eval mode with
eager attention and returns a `LoadedModel`. An MXFP4 checkpoint on a machine without the MXFP4 kernels (CUDA
with compute capability >= 7.5, triton and the `kernels` package) is dequantized to bf16 and the note says so.
Worker-side module: imports torch/transformers lazily, never duckdb or streamlit.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BadInputError
from bench.models.presets import list_presets, load_preset_config, preset_dict

SYNTHETIC_PREFIX = "synthetic:"
ATTN_IMPLEMENTATION = "eager"  # gpt-oss attention sinks: sdpa is unsupported
EXPERTS_IMPLEMENTATIONS: tuple[str, ...] = ("eager", "batched_mm", "grouped_mm")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json")
# config keys that change between transformers versions or runs but not the model
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "dtype", "torch_dtype", "_commit_hash")


@dataclass
class LoadedModel:
    """A model ready for the engines, with what the run records about it."""

    model: Any  # transformers PreTrainedModel (kept untyped so this module imports without torch)
    config: Any  # its PretrainedConfig (the same object as model.config)
    source: str
    fingerprint: str
    notes: list[str] = field(default_factory=list)
    base_experts: int = 0  # experts per layer before any pruning
    synthetic: bool = False
    device: str = "cpu"
    dtype: str = "float32"


def is_synthetic(source: str) -> bool:
    return source.startswith(SYNTHETIC_PREFIX)


def preset_name(source: str) -> str:
    name = source[len(SYNTHETIC_PREFIX) :].strip()
    if not name:
        raise BadInputError(
            f"model {source!r}: write synthetic:<preset>; available presets: {', '.join(list_presets())}"
        )
    return name


def looks_like_path(source: str) -> bool:
    """A local path rather than a Hugging Face id (`org/name`): absolute, ./ ../ ~, or more than one slash."""
    return source.startswith(("/", "./", "../", "~", ".\\")) or source in (".", "..") or source.count("/") > 1


def _missing_model(source: str, exc: Exception) -> BadInputError:
    presets = f"for a synthetic model use synthetic:<preset> with one of: {', '.join(list_presets())}"
    if looks_like_path(source):
        p = Path(source).expanduser()
        what = "does not exist" if not p.exists() else "is not a model directory (no loadable config.json)"
        return BadInputError(f"model {source!r}: the path {p} {what}; check the path ({presets}).")
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    how = (
        f"HF_HUB_OFFLINE is set, so it must already be in the local Hugging Face cache: run "
        f"`hf download {source}` on a machine with network, or unset HF_HUB_OFFLINE"
        if offline
        else f"check the id, or fetch it with `hf download {source}` (the huggingface_hub CLI)"
    )
    return BadInputError(
        f"model {source!r} could not be found as a local directory or a Hugging Face model ({how}); "
        f"{presets}. ({str(exc)[:300]})"
    )


def resolve_config(source: str):  # -> transformers.PretrainedConfig
    """The config of a model source, without building weights."""
    if is_synthetic(source):
        return load_preset_config(preset_name(source))
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _missing_model(source, exc) from exc


def resolve_device(device: str) -> str:
    """`auto` -> cuda when available, else cpu."""
    import torch

    if device in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f'device {device!r} requested but CUDA is not available here; use device = "cpu"')
    return device


def _stable_config_dict(config: Any) -> dict[str, Any]:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in d.items() if k not in _VOLATILE_CONFIG_KEYS}


def _sha(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def synthetic_fingerprint(preset: str, seed: int) -> str:
    """Hash of the preset's config dict and the seed: same preset file + seed -> same weights on a device."""
    return "syn-" + _sha({"preset": preset, "config": preset_dict(preset), "seed": seed})


def _checkpoint_dir(source: str) -> Path | None:
    p = Path(source).expanduser()
    if p.is_dir():
        return p
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
    except Exception:  # not a valid repo id, no cache
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _file_sample_digest(path: Path, samples: int = 16, chunk: int = 1 << 16) -> str:
    """sha256 of `samples` evenly spaced 64 KiB chunks (whole file if small): cheap on a 40 GB checkpoint, yet
    different weights of the same shapes give a different digest."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as f:
        if size <= samples * chunk:
            h.update(f.read())
        else:
            for i in range(samples):
                f.seek((size - chunk) * i // (samples - 1))
                h.update(f.read(chunk))
    return h.hexdigest()[:16]


def checkpoint_fingerprint(source: str, config: Any) -> str:
    """Hash of the checkpoint's config and its weight/config files (name, size, sampled content digest), plus the
    hub commit when there is one; config only if no files are found."""
    files: list[tuple[str, int, str]] = []
    ckpt = _checkpoint_dir(source)
    if ckpt is not None:
        for f in sorted(ckpt.iterdir()):
            if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
                files.append((f.name, f.stat().st_size, _file_sample_digest(f)))
    commit = getattr(config, "_commit_hash", None)
    return "ckpt-" + _sha({"config": _stable_config_dict(config), "files": files, "commit": commit})


def mxfp4_kernels_available() -> bool:
    """True where transformers can run MXFP4 natively: CUDA cc >= 7.5 with triton, `kernels` and accelerate."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (7, 5):
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("triton", "kernels", "accelerate"))


def _is_mxfp4(config: Any) -> bool:
    q = getattr(config, "quantization_config", None)
    method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
    return str(getattr(method, "value", method)).lower() == "mxfp4"


def set_experts_implementation(model: Any, name: str) -> None:
    """Switch the MoE experts kernel path (eager | batched_mm | grouped_mm) on a loaded model."""
    if name not in EXPERTS_IMPLEMENTATIONS:
        raise BadInputError(f"experts implementation {name!r}: must be one of {', '.join(EXPERTS_IMPLEMENTATIONS)}")
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation(name)
    else:  # older transformers: the experts modules read config._experts_implementation at forward time
        model.config._experts_implementation = name


def _set_attn_eager(model: Any) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    else:
        model.config._attn_implementation = ATTN_IMPLEMENTATION


def _build_synthetic(source: str, device: str, dtype: Any, seed: int):
    import torch
    from transformers import AutoModelForCausalLM

    config = load_preset_config(preset_name(source))
    torch.manual_seed(seed)  # seeds CPU and every CUDA device
    # Built directly on the target device: on CUDA the random init runs there (the 20B preset builds in ~0.3 s).
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def _load_pretrained(source: str, device: str, dtype: Any, dequantize_mxfp4: bool | None, notes: list[str]):
    from transformers import AutoModelForCausalLM

    config = resolve_config(source)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if _is_mxfp4(config):
        dequantize = (not mxfp4_kernels_available()) if dequantize_mxfp4 is None else dequantize_mxfp4
        if dequantize:
            from transformers import Mxfp4Config

            kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
            notes.append("mxfp4 dequantized to bf16")
        else:
            notes.append("mxfp4 weights run natively (MXFP4 kernels)")
    if device != "cpu":
        kwargs["device_map"] = device
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise _missing_model(source, exc) from exc
    if device == "cpu" and str(next(model.parameters()).device) != "cpu":
        model = model.to("cpu")
    return model


def load_model(
    source: str,
    device: str,
    dtype: Any,
    seed: int,
    experts_implementation: str | None = None,
    dequantize_mxfp4: bool | None = None,
) -> LoadedModel:
    """Build or load `source` on `device` in `dtype` (a torch.dtype), eval mode, eager attention.

    experts_implementation: None keeps the config's choice (the presets say grouped_mm).
    dequantize_mxfp4: None = only when the MXFP4 kernels are unavailable; True/False force it.
    """

    device = resolve_device(device)
    notes: list[str] = []
    if is_synthetic(source):
        preset = preset_name(source)
        model = _build_synthetic(source, device, dtype, seed)
        fingerprint = synthetic_fingerprint(preset, seed)
        notes.append(f"synthetic weights: preset {preset}, seed {seed}")
    else:
        model = _load_pretrained(source, device, dtype, dequantize_mxfp4, notes)
        fingerprint = checkpoint_fingerprint(source, model.config)
    model.eval()
    model.requires_grad_(False)
    _set_attn_eager(model)
    if experts_implementation is not None:
        set_experts_implementation(model, experts_implementation)
    config = model.config
    return LoadedModel(
        model=model,
        config=config,
        source=source,
        fingerprint=fingerprint,
        notes=notes,
        base_experts=int(getattr(config, "num_local_experts", 0) or 0),
        synthetic=is_synthetic(source),
        device=device,
        dtype=str(dtype).removeprefix("torch."),
    )


def torch_dtype(name: str, device: str):
    """Spec dtype name -> torch.dtype; `auto` is bfloat16 on cuda, float32 on cpu."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]
    except KeyError:
        raise BadInputError(f"dtype {name!r}: must be one of auto, bfloat16, float16, float32") from None
