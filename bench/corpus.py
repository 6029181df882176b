"""Text domains for calibration, quality and prompts: reading them, hashing them, and splitting them.

A domain is a name and its text. The text comes from
- files: `.txt`, `.md` (the whole file) or `.jsonl` (the `text` field of every line), or a folder of them
  (searched recursively, in sorted path order); or
- a built-in domain drawn from the installed Python standard library (offline text everybody has):
  - `code`:  the source of every `.py` file under the stdlib folder (`sysconfig.get_paths()["stdlib"]`),
    sorted by relative path, leaving out the folders `test`, `tests`, `idlelib`, `site-packages`,
    `dist-packages`, `__pycache__` and `lib2to3` (test data, GUI, third-party packages);
  - `prose`: the docstrings (module, class, function, method; `ast.get_docstring`, cleaned) of those same files, in
    the same order, one paragraph each.
  Python versions ship different stdlibs, so the text hash names exactly which text was used.

Split: the documents are joined with blank lines into one text. Calibration reads only its first
CALIBRATION_FRACTION of characters; quality (and prompts) read only the rest, the held-out tail, so quality is
never measured on calibration text.

No torch, no duckdb: both the bench process and the worker import this module.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BadInputError

BUILTIN_DOMAINS: dict[str, str] = {
    "code": "Python standard library module sources (.py files under the stdlib folder, tests/idlelib/"
    "site-packages left out), sorted by path",
    "prose": "docstrings of the Python standard library modules, classes and functions (same files, same order)",
}
TEXT_SUFFIXES: tuple[str, ...] = (".txt", ".md", ".jsonl")
CALIBRATION_FRACTION = 0.9
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3"}
RANDOM_TOKENS = "random-tokens"  # the explicit, labelled choice of calibrating on seeded random token ids


@dataclass
class DomainText:
    """A domain's whole text and where it came from."""

    name: str
    text: str
    spec: str  # what to re-read: "builtin:code" or a path
    description: str  # for people: what the text is
    documents: int

    @property
    def text_hash(self) -> str:
        return text_hash(self.text)

    @property
    def calibration_text(self) -> str:
        return self.text[: split_point(self.text)]

    @property
    def heldout_text(self) -> str:
        return self.text[split_point(self.text) :]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def split_point(text: str) -> int:
    """Character index where the held-out tail starts."""
    return int(len(text) * CALIBRATION_FRACTION)


def _stdlib_files(stdlib: str) -> list[Path]:
    root = Path(stdlib)
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts[:-1]):
            continue
        out.append(p)
    return out


def _read_source(p: Path) -> str | None:
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                out.append(doc.strip())
    return out


def builtin_domain(kind: str, name: str | None = None) -> DomainText:
    """The built-in `code` or `prose` domain of this Python's standard library (read once per process)."""
    if kind not in BUILTIN_DOMAINS:
        raise BadInputError(f"built-in domain {kind!r}: choose one of {', '.join(BUILTIN_DOMAINS)}")
    d = _builtin(kind, sysconfig.get_paths()["stdlib"])
    return DomainText(name=name or kind, text=d.text, spec=d.spec, description=d.description, documents=d.documents)


@functools.lru_cache(maxsize=4)
def _builtin(kind: str, root: str) -> DomainText:
    docs: list[str] = []
    for p in _stdlib_files(root):
        src = _read_source(p)
        if src is None:
            continue
        if kind == "code":
            if src.strip():
                docs.append(src)
        else:
            docs.extend(_docstrings(src))
    import sys

    version = f"Python {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    return DomainText(name=kind, text="\n\n".join(docs), spec=f"builtin:{kind}",
                      description=f"built-in {kind}: {BUILTIN_DOMAINS[kind]} ({version})", documents=len(docs))


def _read_file(p: Path, where: str) -> list[str]:
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or exc
        raise BadInputError(f"{where}: cannot read {p} ({reason}); check the path and permissions") from exc
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{where}: {p} is not UTF-8 text ({exc.reason}); convert it or leave it out") from exc
    if p.suffix != ".jsonl":
        return [raw] if raw.strip() else []
    docs = []
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{where}: {p} line {i} is not JSON ({exc.msg}); one JSON object per line") from exc
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise BadInputError(f'{where}: {p} line {i} has no string "text" field; write {{"text": "..."}}')
        if text.strip():
            docs.append(text)
    return docs


def files_domain(name: str, path: str) -> DomainText:
    """A domain from a .txt/.md/.jsonl file or a folder of them."""
    where = f"domain {name!r}"
    p = Path(path).expanduser()
    if not p.exists():
        raise BadInputError(f"{where}: {p} does not exist; give a .txt/.md/.jsonl file or a folder of them")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
        if not files:
            raise BadInputError(f"{where}: folder {p} holds no {'/'.join(TEXT_SUFFIXES)} files")
    else:
        if p.suffix not in TEXT_SUFFIXES:
            raise BadInputError(f"{where}: {p} is not one of {', '.join(TEXT_SUFFIXES)}; convert it or rename it")
        files = [p]
    docs = [d for f in files for d in _read_file(f, where)]
    text = "\n\n".join(docs)
    if not text.strip():
        raise BadInputError(f"{where}: {p} holds no text (empty files or empty jsonl `text` fields); add text")
    desc = f"{len(files)} file(s) under {p.resolve()}" if p.is_dir() else f"file {p.resolve()}"
    return DomainText(name=name, text=text, spec=str(p.resolve()), description=desc, documents=len(docs))


def load_domain(name: str, spec: str) -> DomainText:
    """`spec` is `builtin:code`, `builtin:prose` or a path."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise BadInputError(f"domain name {name!r}: use letters, digits, '-' or '_' (e.g. code, chat)")
    if name == RANDOM_TOKENS:
        raise BadInputError(f"domain name {RANDOM_TOKENS!r} is reserved for random-token calibration; pick another")
    if spec.startswith("builtin:"):
        return builtin_domain(spec.removeprefix("builtin:"), name)
    return files_domain(name, spec)


def parse_domain_arg(text: str) -> tuple[str, str]:
    """`--domain NAME=PATH` or `--domain NAME` (a built-in: code | prose) -> (name, spec)."""
    if "=" in text:
        name, path = (s.strip() for s in text.split("=", 1))
        if not name or not path:
            raise BadInputError(f"--domain {text!r}: write NAME=PATH (e.g. code=src/) or a built-in name")
        return name, path
    name = text.strip()
    if name not in BUILTIN_DOMAINS:
        raise BadInputError(
            f"--domain {text!r}: not a built-in domain ({', '.join(BUILTIN_DOMAINS)}); write NAME=PATH for your text"
        )
    return name, f"builtin:{name}"
