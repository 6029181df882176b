"""Sweep specs: the TOML format, its dataclasses, and validation with messages that name the field.

A spec has a `title`, a `[sweep]` table and one or more `[[variants]]`. `load_spec(path)` parses and
validates; `spec_from_dict` does the same for a dict (CLI flags, the dashboard form, a stored sweep).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.engines import validate_engine_options
from bench.errors import BadInputError
from bench.paths import DATA_DIR, PROJECT_ROOT

ENGINE_NAMES: tuple[str, ...] = ("hf", "graph")
DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")
DEVICES: tuple[str, ...] = ("auto", "cuda", "cpu")
PRUNE_METHODS: tuple[str, ...] = ("first", "random", "frequency")
WEIGHT_FORMATS: tuple[str, ...] = ("bf16", "mxfp4")  # expert weight format (docs/MXFP4.md)


@dataclass
class PruneSpec:
    """One of: {experts, method} | {keep} | {union, experts}. Paths are resolved, absolute."""

    experts: int | None = None
    method: str | None = None
    keep: str | None = None
    union: list[str] | None = None

    @property
    def kind(self) -> str:
        if self.keep is not None:
            return "keep"
        if self.union is not None:
            return "union"
        return "method"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; keep-file paths inside the project are written relative to it (portable)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if self.keep is not None:
            out["keep"] = portable_path(self.keep)
        if self.union is not None:
            out["union"] = [portable_path(p) for p in self.union]
        return out


def portable_path(path: str) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(p)


@dataclass
class VariantSpec:
    name: str
    model: str
    top_k: int
    prune: PruneSpec | None = None
    weights: str = "bf16"  # expert weight format: bf16 | mxfp4


@dataclass
class SweepSettings:
    prompt_len: int
    new_tokens: int
    batch_sizes: list[int]
    repeats: int = 3
    engine: str = "hf"
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    device: str = "auto"
    seed: int = 0
    warmup: bool = True
    weights: str = "bf16"  # default expert weight format of the variants that do not set one
    # the engine's typed options ([sweep.engine_options]; graph: bench/engines/graph/options.py), defaults filled
    engine_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepSpec:
    title: str
    sweep: SweepSettings
    variants: list[VariantSpec] = field(default_factory=list)
    source_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"title": self.title, "sweep": dataclasses.asdict(self.sweep), "variants": []}
        for v in self.variants:
            entry: dict[str, Any] = {"name": v.name, "model": v.model, "top_k": v.top_k}
            if v.prune is not None:
                entry["prune"] = v.prune.to_dict()
            if v.weights != self.sweep.weights:
                entry["weights"] = v.weights
            out["variants"].append(entry)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def planned_points(self) -> int:
        return len(self.variants) * len(self.sweep.batch_sizes) * self.sweep.repeats


_TOP_KEYS = {"title", "sweep", "variants"}
_SWEEP_KEYS = {f.name for f in dataclasses.fields(SweepSettings)}
_VARIANT_KEYS = {"name", "model", "top_k", "prune", "weights"}
_PRUNE_KEYS = {"experts", "method", "keep", "union"}


def _fail(where: str, message: str) -> BadInputError:
    return BadInputError(f"{where}: {message}")


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(
            f"{where}.{unknown[0]}" if where else unknown[0],
            f"unknown key; allowed keys are {', '.join(sorted(k for k in allowed if not k.startswith('_')))}",
        )


def _int(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"must be an integer, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise _fail(where, f"must be >= {minimum}, got {value}")
    return value


def _str(value: Any, where: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"must be a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise _fail(where, f"must be one of {', '.join(choices)}; got {value!r}")
    return value


def resolve_data_path(value: str, base_dir: Path | None, where: str, restrict: bool = False) -> str:
    """Resolve a keep-file path: absolute, else relative to the spec's folder, data/keep/, data/ or the project.

    With `restrict` (paths written inside a spec file), the file must lie inside the project's data/ folder or
    the spec's own folder: a spec from elsewhere cannot make the bench read arbitrary files. Paths given
    explicitly on the command line are not restricted.
    """
    candidates = []
    p = Path(value).expanduser()
    if p.is_absolute():
        candidates.append(p)
    else:
        if base_dir is not None:
            candidates.append(base_dir / p)
        candidates += [DATA_DIR / "keep" / p, DATA_DIR / p, PROJECT_ROOT / p]
    for c in candidates:
        if c.is_file():
            resolved = c.resolve()
            roots = [DATA_DIR.resolve()] + ([base_dir.resolve()] if base_dir is not None else [])
            if restrict and not any(resolved.is_relative_to(r) for r in roots):
                raise _fail(
                    where,
                    f"{value!r} resolves to {resolved}, outside data/ and the spec's folder; a spec may only name "
                    "files there. Copy the keep file into data/keep/ or pass it with --variant keep=PATH",
                )
            return str(resolved)
    tried = ", ".join(str(c) for c in candidates)
    raise _fail(where, f"keep file {value!r} not found (looked in: {tried}); create it or fix the path")


def _prune(raw: Any, where: str, base_dir: Path | None, restrict: bool) -> PruneSpec:
    if not isinstance(raw, dict):
        raise _fail(where, f"must be a table such as {{experts = 16, method = \"first\"}}, got {raw!r}")
    _check_keys(raw, _PRUNE_KEYS, where)
    if "keep" in raw:
        if set(raw) != {"keep"}:
            raise _fail(where, "`keep` stands alone: {keep = \"file.json\"}")
        keep = resolve_data_path(_str(raw["keep"], f"{where}.keep"), base_dir, f"{where}.keep", restrict)
        return PruneSpec(keep=keep)
    if "union" in raw:
        if set(raw) != {"union", "experts"}:
            raise _fail(where, "a union prune is {union = [\"a.json\", \"b.json\"], experts = N}")
        files = raw["union"]
        if not isinstance(files, list) or not files:
            raise _fail(f"{where}.union", "must be a non-empty list of keep files")
        resolved = [
            resolve_data_path(_str(f, f"{where}.union[{i}]"), base_dir, f"{where}.union[{i}]", restrict)
            for i, f in enumerate(files)
        ]
        return PruneSpec(union=resolved, experts=_int(raw["experts"], f"{where}.experts", 1))
    if set(raw) != {"experts", "method"}:
        missing = sorted({"experts", "method"} - set(raw))
        raise _fail(where, f"missing {', '.join(missing)}; write {{experts = N, method = \"first\"}}")
    return PruneSpec(
        experts=_int(raw["experts"], f"{where}.experts", 1),
        method=_str(raw["method"], f"{where}.method", PRUNE_METHODS),
    )


def spec_from_dict(
    raw: dict[str, Any], base_dir: Path | None = None, source_path: str | None = None, restrict_paths: bool = False
) -> SweepSpec:
    """Validate a parsed spec. Raises BadInputError naming the field (e.g. `variants[2].top_k`).

    restrict_paths: the dict came from a spec file, so its keep files must lie in data/ or the spec's folder
    (a variant marked `_explicit` came from a command-line flag and is not restricted).
    """
    if not isinstance(raw, dict):
        raise _fail("spec", "must be a table")
    _check_keys(raw, _TOP_KEYS, "")
    title = _str(raw.get("title", "moe-bench sweep"), "title")
    sweep_raw = raw.get("sweep")
    if not isinstance(sweep_raw, dict):
        raise _fail("sweep", "missing [sweep] table with prompt_len, new_tokens and batch_sizes")
    _check_keys(sweep_raw, _SWEEP_KEYS, "sweep")
    for req in ("prompt_len", "new_tokens", "batch_sizes"):
        if req not in sweep_raw:
            raise _fail(f"sweep.{req}", "is required")
    batches = sweep_raw["batch_sizes"]
    if not isinstance(batches, list):
        raise _fail("sweep.batch_sizes", f"must be a list of integers such as [1, 2, 4], got {batches!r}")
    if not batches:
        raise _fail("sweep.batch_sizes", "is empty; give at least one batch size, e.g. [1, 8, 32]")
    batch_sizes = [_int(b, f"sweep.batch_sizes[{i}]", 1) for i, b in enumerate(batches)]
    if len(set(batch_sizes)) != len(batch_sizes):
        raise _fail("sweep.batch_sizes", f"has duplicates: {batch_sizes}")
    settings = SweepSettings(
        prompt_len=_int(sweep_raw["prompt_len"], "sweep.prompt_len", 1),
        new_tokens=_int(sweep_raw["new_tokens"], "sweep.new_tokens", 2),
        batch_sizes=batch_sizes,
        repeats=_int(sweep_raw.get("repeats", 3), "sweep.repeats", 1),
        engine=_str(sweep_raw.get("engine", "hf"), "sweep.engine", ENGINE_NAMES),
        dtype=_str(sweep_raw.get("dtype", "auto"), "sweep.dtype", DTYPES),
        device=_str(sweep_raw.get("device", "auto"), "sweep.device", DEVICES),
        seed=_int(sweep_raw.get("seed", 0), "sweep.seed", 0),
        warmup=bool(sweep_raw.get("warmup", True)),
        weights=_str(sweep_raw.get("weights", "bf16"), "sweep.weights", WEIGHT_FORMATS),
    )
    settings.engine_options = validate_engine_options(settings.engine, sweep_raw.get("engine_options"))
    if "warmup" in sweep_raw and not isinstance(sweep_raw["warmup"], bool):
        raise _fail("sweep.warmup", "must be true or false")
    variants_raw = raw.get("variants")
    if not isinstance(variants_raw, list) or not variants_raw:
        raise _fail("variants", "missing; add at least one [[variants]] table with name, model and top_k")
    variants: list[VariantSpec] = []
    seen: set[str] = set()
    for i, v in enumerate(variants_raw):
        where = f"variants[{i}]"
        if not isinstance(v, dict):
            raise _fail(where, "must be a table with name, model and top_k")
        _check_keys(v, _VARIANT_KEYS | {"_explicit"}, where)
        for req in ("name", "model", "top_k"):
            if req not in v:
                raise _fail(f"{where}.{req}", "is required")
        name = _str(v["name"], f"{where}.name")
        if name in seen:
            raise _fail(f"{where}.name", f"duplicate variant name {name!r}; variant names must be unique")
        seen.add(name)
        restrict = restrict_paths and not v.get("_explicit")
        prune = _prune(v["prune"], f"{where}.prune", base_dir, restrict) if "prune" in v else None
        top_k = _int(v["top_k"], f"{where}.top_k", 1)
        if prune is not None and prune.experts is not None and top_k > prune.experts:
            raise _fail(
                f"{where}.top_k",
                f"top_k {top_k} is greater than the {prune.experts} experts this variant keeps; "
                f"lower top_k or keep more experts",
            )
        weights = _str(v.get("weights", settings.weights), f"{where}.weights", WEIGHT_FORMATS)
        variants.append(VariantSpec(name=name, model=_str(v["model"], f"{where}.model"), top_k=top_k, prune=prune,
                                    weights=weights))
    return SweepSpec(title=title, sweep=settings, variants=variants, source_path=source_path)


def read_spec_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML spec file into a dict (not yet validated); BadInputError names the file."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"spec file {p} not found; see data/specs/ for examples")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"spec file {p} is not valid TOML: {exc}") from exc


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a TOML spec file."""
    p = Path(path)
    raw = read_spec_toml(p)
    return spec_from_dict(raw, base_dir=p.parent.resolve(), source_path=str(p), restrict_paths=True)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def spec_to_toml(spec: SweepSpec) -> str:
    """The spec as a TOML file that `bench.spec.load_spec` reads back to an equal spec."""
    d = spec.to_dict()
    out = [f"title = {_toml_value(d['title'])}", "", "[sweep]"]
    out += [f"{k} = {_toml_value(v)}" for k, v in d["sweep"].items()]
    for v in d["variants"]:
        out += ["", "[[variants]]"] + [f"{k} = {_toml_value(x)}" for k, x in v.items()]
    return "\n".join(out) + "\n"
