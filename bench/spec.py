"""Sweep specs: the TOML format, its dataclasses, and validation with messages that name the field.

A spec has a `title`, a `[sweep]` table and one or more `[[variants]]`. `load_spec(path)` parses and
validates; `spec_from_dict` does the same for a dict (CLI flags, the dashboard form, a stored sweep).
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BadInputError
from bench.paths import DATA_DIR, PROJECT_ROOT

ENGINE_NAMES: tuple[str, ...] = ("hf", "graph")
DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")
DEVICES: tuple[str, ...] = ("auto", "cuda", "cpu")
PRUNE_METHODS: tuple[str, ...] = ("first", "random", "frequency", "reap", "union")
CALIBRATED_METHODS: tuple[str, ...] = ("frequency", "reap", "union")  # need `domains` (bench calibrate)
RANDOM_TOKENS = "random-tokens"  # domains = ["random-tokens"]: the explicit, labelled random-id calibration

# Sane ranges of the numeric fields (inclusive). Every value the store keeps fits a 32-bit INTEGER column, and a
# value past these limits is a typo, not a benchmark. new_tokens >= 2: the first token comes from the prefill,
# decode throughput is timed over the new_tokens - 1 steps after it (both engines support 2, one timed step).
INT32_MAX = 2**31 - 1
LIMITS: dict[str, tuple[int, int]] = {
    "prompt_len": (1, 1_048_576),
    "new_tokens": (2, 1_048_576),
    "batch_size": (1, 65_536),
    "repeats": (1, 1_000),
    "seed": (0, INT32_MAX),
    "top_k": (1, 4_096),
    "experts": (1, 4_096),
}
TITLE_MAX = 200
NAME_MAX = 100
# Sweep and run ids: they name files (logs, locks, launch records), so nothing but letters, digits, and . _ -
# (not first), at most 128 characters. No slash, no "..", no leading dot or dash.
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_id(value: Any, where: str) -> str:
    """A sweep or run id, validated against ID_RE (they become file names); BadInputError names `where`."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value) or ".." in value:
        raise BadInputError(
            f"{where}: {value!r} is not a valid id; use 1-128 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit), e.g. s20261130-120000-abc123"
        )
    return value


@dataclass
class PruneSpec:
    """One of: {experts, method} | {experts, method, domains[, rank, per_domain]} | {keep} | {union, experts}.
    Paths are resolved, absolute. A calibrated prune (domains) is resolved by the bench process against the
    stored calibrations into keep_layers + note (bench.calibrated) before the worker sees it."""

    experts: int | None = None
    method: str | None = None
    keep: str | None = None
    union: list[str] | None = None
    domains: list[str] | None = None
    rank: str | None = None
    per_domain: int | None = None
    keep_layers: list[list[int]] | None = None
    note: str | None = None

    @property
    def kind(self) -> str:
        if self.keep_layers is not None:
            return "resolved"
        if self.keep is not None:
            return "keep"
        if self.union is not None:
            return "union"
        if self.domains is not None and self.domains != [RANDOM_TOKENS]:
            return "calibrated"
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
    cluster: str | None = None  # None: this GPU; "local", "local:N" or a Dask scheduler address (bench.cluster)
    prompts: str = "random"  # random | domain:<name> (cut from the domain's held-out text)
    quality: bool = False  # after the speed points, KL/agreement/perplexity against the base (same worker)
    quality_domains: list[str] | None = None  # default: the calibrated domains the variants name
    quality_tokens: int | None = None  # positions per domain (default: 32768 on cuda, 512 on cpu)


@dataclass
class SweepSpec:
    title: str
    sweep: SweepSettings
    variants: list[VariantSpec] = field(default_factory=list)
    source_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"title": self.title, "sweep": _sweep_dict(self.sweep), "variants": []}
        for v in self.variants:
            entry: dict[str, Any] = {"name": v.name, "model": v.model, "top_k": v.top_k}
            if v.prune is not None:
                entry["prune"] = v.prune.to_dict()
            out["variants"].append(entry)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def planned_points(self) -> int:
        return len(self.variants) * len(self.sweep.batch_sizes) * self.sweep.repeats


def _sweep_dict(settings: SweepSettings) -> dict[str, Any]:
    """The [sweep] table; the research settings (prompts, quality...) and cluster only when not their default."""
    out = dataclasses.asdict(settings)
    for key, default in (("prompts", "random"), ("quality", False), ("quality_domains", None),
                         ("quality_tokens", None), ("cluster", None)):  # cluster absent = this GPU
        if out.get(key) == default:
            out.pop(key)
    return out


_TOP_KEYS = {"title", "sweep", "variants"}
_SWEEP_KEYS = {f.name for f in dataclasses.fields(SweepSettings)}
_VARIANT_KEYS = {"name", "model", "top_k", "prune"}
_PRUNE_KEYS = {"experts", "method", "keep", "union", "domains", "rank", "per_domain"}


def _fail(where: str, message: str) -> BadInputError:
    return BadInputError(f"{where}: {message}")


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(
            f"{where}.{unknown[0]}" if where else unknown[0],
            f"unknown key; allowed keys are {', '.join(sorted(k for k in allowed if not k.startswith('_')))}",
        )


def _int(value: Any, where: str, minimum: int | None = None, limit: str | None = None) -> int:
    """An integer; `limit` names a LIMITS range that it must lie in."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"must be an integer, got {type(value).__name__} {value!r}")
    lo, hi = LIMITS[limit] if limit else (minimum, None)
    if lo is not None and value < lo:
        raise _fail(where, f"must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise _fail(where, f"must be <= {hi:,}, got {value:,}")
    return value


def _str(value: Any, where: str, choices: tuple[str, ...] | None = None, max_len: int | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"must be a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise _fail(where, f"must be one of {', '.join(choices)}; got {value!r}")
    if max_len is not None and len(value) > max_len:
        raise _fail(where, f"is {len(value)} characters long; at most {max_len} are allowed")
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise _fail(where, f"contains a control character (newline, tab, ...) or a lone surrogate: {value!r}; "
                    "remove it")
    return value


def _model(value: Any, where: str) -> str:
    """A model source; a `synthetic:` one must name a preset in data/presets/ (a name, never a path)."""
    from bench.models.presets import check_preset_name

    source = _str(value, where, max_len=1000)
    if source.startswith("synthetic:"):
        try:
            check_preset_name(source[len("synthetic:"):].strip())
        except BadInputError as exc:
            raise _fail(where, str(exc)) from None
    return source


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
        return PruneSpec(union=resolved, experts=_int(raw["experts"], f"{where}.experts", limit="experts"))
    missing = sorted({"experts", "method"} - set(raw))
    if missing:
        raise _fail(where, f"missing {', '.join(missing)}; write {{experts = N, method = \"first\"}}")
    method = _str(raw["method"], f"{where}.method", PRUNE_METHODS)
    return _calibrated_prune(raw, where, _int(raw["experts"], f"{where}.experts", limit="experts"), method)


def _calibrated_prune(raw: dict[str, Any], where: str, experts: int, method: str) -> PruneSpec:
    """{experts, method[, domains, rank, per_domain]}: frequency/reap/union name calibration domains."""
    extra = sorted(set(raw) - {"experts", "method"})
    if method not in CALIBRATED_METHODS:
        if extra:
            raise _fail(f"{where}.{extra[0]}", f"method {method!r} takes no {extra[0]}; only experts and method")
        return PruneSpec(experts=experts, method=method)
    if "domains" not in raw:
        raise _fail(
            f"{where}.domains",
            f"method {method!r} ranks experts by calibration on text: add domains = [\"code\", ...] (calibrate "
            f"them first: python -m bench calibrate --model M --domain code), or domains = [\"{RANDOM_TOKENS}\"] "
            "for the labelled count over seeded random token ids (frequency only)",
        )
    domains = raw["domains"]
    if not isinstance(domains, list) or not domains:
        raise _fail(f"{where}.domains", f"must be a non-empty list of calibrated domain names, got {domains!r}")
    names = [_str(d, f"{where}.domains[{i}]") for i, d in enumerate(domains)]
    if len(set(names)) != len(names):
        raise _fail(f"{where}.domains", f"lists a domain twice: {names}")
    if RANDOM_TOKENS in names and (names != [RANDOM_TOKENS] or method != "frequency" or len(raw) > 3):
        raise _fail(f"{where}.domains", f"{RANDOM_TOKENS!r} stands alone, with method = \"frequency\"")
    if method == "union" and len(names) < 2:
        raise _fail(f"{where}.domains", "a union needs at least two domains")
    for key in ("rank", "per_domain"):
        if key in raw and method != "union":
            raise _fail(f"{where}.{key}", f"applies to method \"union\" only, not {method!r}")
    rank = _str(raw["rank"], f"{where}.rank", ("saliency", "frequency")) if "rank" in raw else None
    per_domain = _int(raw["per_domain"], f"{where}.per_domain", 1) if "per_domain" in raw else None
    return PruneSpec(experts=experts, method=method, domains=names, rank=rank, per_domain=per_domain)


def _research_settings(sweep_raw: dict[str, Any], settings: SweepSettings) -> None:
    """sweep.prompts, sweep.quality, sweep.quality_domains, sweep.quality_tokens."""
    prompts = _str(sweep_raw.get("prompts", "random"), "sweep.prompts")
    if prompts != "random" and not (prompts.startswith("domain:") and prompts.removeprefix("domain:").strip()):
        raise _fail("sweep.prompts", f'must be "random" or "domain:<name>" (e.g. "domain:code"), got {prompts!r}')
    settings.prompts = prompts
    if "quality" in sweep_raw and not isinstance(sweep_raw["quality"], bool):
        raise _fail("sweep.quality", "must be true or false")
    settings.quality = bool(sweep_raw.get("quality", False))
    if "quality_domains" in sweep_raw:
        qd = sweep_raw["quality_domains"]
        if not isinstance(qd, list) or not qd:
            raise _fail("sweep.quality_domains", f"must be a non-empty list of domain names, got {qd!r}")
        settings.quality_domains = [_str(d, f"sweep.quality_domains[{i}]") for i, d in enumerate(qd)]
    if "quality_tokens" in sweep_raw:
        settings.quality_tokens = _int(sweep_raw["quality_tokens"], "sweep.quality_tokens", 16)


def _cluster(value: Any) -> str | None:
    from bench.cluster.target import parse_cluster

    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail("sweep.cluster", f"must be a string such as \"local\", \"local:2\" or \"tcp://host:8786\", "
                                     f"got {value!r}")
    target = parse_cluster(value, where="sweep.cluster")
    return None if target is None else str(target)


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
    title = _str(raw.get("title", "moe-bench sweep"), "title", max_len=TITLE_MAX)
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
    if len(batches) > 64:
        raise _fail("sweep.batch_sizes", f"has {len(batches)} entries; at most 64 are allowed")
    batch_sizes = [_int(b, f"sweep.batch_sizes[{i}]", limit="batch_size") for i, b in enumerate(batches)]
    if len(set(batch_sizes)) != len(batch_sizes):
        raise _fail("sweep.batch_sizes", f"has duplicates: {batch_sizes}")
    settings = SweepSettings(
        prompt_len=_int(sweep_raw["prompt_len"], "sweep.prompt_len", limit="prompt_len"),
        new_tokens=_int(sweep_raw["new_tokens"], "sweep.new_tokens", limit="new_tokens"),
        batch_sizes=batch_sizes,
        repeats=_int(sweep_raw.get("repeats", 3), "sweep.repeats", limit="repeats"),
        engine=_str(sweep_raw.get("engine", "hf"), "sweep.engine", ENGINE_NAMES),
        dtype=_str(sweep_raw.get("dtype", "auto"), "sweep.dtype", DTYPES),
        device=_str(sweep_raw.get("device", "auto"), "sweep.device", DEVICES),
        seed=_int(sweep_raw.get("seed", 0), "sweep.seed", limit="seed"),
        warmup=bool(sweep_raw.get("warmup", True)),
        cluster=_cluster(sweep_raw.get("cluster")),
    )
    if "warmup" in sweep_raw and not isinstance(sweep_raw["warmup"], bool):
        raise _fail("sweep.warmup", "must be true or false")
    _research_settings(sweep_raw, settings)
    variants_raw = raw.get("variants")
    if not isinstance(variants_raw, list) or not variants_raw:
        raise _fail("variants", "missing; add at least one [[variants]] table with name, model and top_k")
    if len(variants_raw) > 256:
        raise _fail("variants", f"has {len(variants_raw)} entries; at most 256 are allowed")
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
        name = _str(v["name"], f"{where}.name", max_len=NAME_MAX)
        if name in seen:
            raise _fail(f"{where}.name", f"duplicate variant name {name!r}; variant names must be unique")
        seen.add(name)
        restrict = restrict_paths and not v.get("_explicit")
        prune = _prune(v["prune"], f"{where}.prune", base_dir, restrict) if "prune" in v else None
        top_k = _int(v["top_k"], f"{where}.top_k", limit="top_k")
        if prune is not None and prune.experts is not None and top_k > prune.experts:
            raise _fail(
                f"{where}.top_k",
                f"top_k {top_k} is greater than the {prune.experts} experts this variant keeps; "
                f"lower top_k or keep more experts",
            )
        variants.append(VariantSpec(name=name, model=_model(v["model"], f"{where}.model"), top_k=top_k, prune=prune))
    return SweepSpec(title=title, sweep=settings, variants=variants, source_path=source_path)


def read_spec_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML spec file into a dict (not yet validated); BadInputError names the file."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"spec file {p} not found; see data/specs/ for examples")
    try:
        return parse_spec_toml(p.read_text())
    except BadInputError as exc:
        raise BadInputError(f"spec file {p} {exc}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise BadInputError(f"spec file {p} cannot be read as UTF-8 text: {exc}") from exc


def parse_spec_toml(text: str) -> dict[str, Any]:
    """Parse spec TOML text; BadInputError ("is not valid TOML: ...") for malformed or absurdly nested input."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"is not valid TOML: {exc}") from exc
    except RecursionError:
        raise BadInputError("is not a usable spec: its tables/arrays are nested too deeply") from None


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a TOML spec file."""
    p = Path(path)
    raw = read_spec_toml(p)
    return spec_from_dict(raw, base_dir=p.parent.resolve(), source_path=str(p), restrict_paths=True)


def spec_to_toml(spec: SweepSpec) -> str:
    """The spec as a TOML file that `bench.spec.load_spec` reads back to an equal spec (written by tomli-w, so
    any title or name, emoji included, is escaped correctly)."""
    import tomli_w  # dashboard side only: the GPU box never writes specs

    return tomli_w.dumps(spec.to_dict())


def validate_for_launch(raw: dict[str, Any]) -> SweepSpec:
    """The one check the dashboard form runs before it says "Launched": the spec rules (`spec_from_dict`), the
    TOML round trip the launch goes through, and what can be checked against the model configs without torch
    (presets exist, top_k and prune.experts within the model's experts, prompt_len + new_tokens within its
    positions). Raises BadInputError naming the field; returns the spec to launch."""
    spec = spec_from_dict(raw)
    text = spec_to_toml(spec)
    try:
        again = spec_from_dict(parse_spec_toml(text))
    except BadInputError as exc:
        raise BadInputError(f"spec: does not survive being written as TOML ({exc})") from None
    if again.to_dict() != spec.to_dict():
        raise BadInputError("spec: changes when written as TOML; check the title and names for odd characters")
    for i, v in enumerate(spec.variants):
        _check_against_preset(spec, v, f"variants[{i}]")
    return spec


def _check_against_preset(spec: SweepSpec, v: VariantSpec, where: str) -> None:
    if not v.model.startswith("synthetic:"):
        return
    from bench.models.presets import preset_dict

    cfg = preset_dict(v.model[len("synthetic:"):].strip())
    experts = int(cfg.get("num_local_experts") or 0)
    kept = v.prune.experts if v.prune is not None and v.prune.experts else experts
    if v.prune is not None and v.prune.experts and experts and v.prune.experts > experts:
        raise _fail(f"{where}.prune.experts", f"{v.prune.experts} exceeds {v.model}'s {experts} experts per layer")
    if kept and v.top_k > kept:
        raise _fail(f"{where}.top_k", f"top_k {v.top_k} is greater than the {kept} experts per layer; lower top_k")
    limit = int(cfg.get("max_position_embeddings") or 0)
    total = spec.sweep.prompt_len + spec.sweep.new_tokens
    if limit and total > limit:
        raise _fail("sweep.prompt_len", f"prompt_len + new_tokens = {total} exceeds {v.model}'s "
                    f"max_position_embeddings {limit}; shorten the prompt or new_tokens")
