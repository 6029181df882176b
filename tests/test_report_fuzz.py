"""Property tests: mutated or truncated report/JSONL files either import or are refused cleanly (BadInputError),
and a refused import leaves the database exactly as it was."""

from __future__ import annotations

from fixtures.report_helpers import REFERENCE, measured_run, write_measured
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.errors import BadInputError
from bench.report import export_selection, parse_jsonl, parse_markdown
from bench.report.importer import import_files

REPORT = REFERENCE.read_text()
ALPHABET = '|-\n :.#`\\{}[]",0123456789abcz'


@st.composite
def mutated(draw, text: str) -> str:
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(len(text) - 1, 0)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
        if op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 40)) :]
        elif op == "insert":
            text = text[:i] + draw(st.text(ALPHABET, min_size=1, max_size=5)) + text[i:]
        elif op == "replace":
            text = text[:i] + draw(st.sampled_from(ALPHABET)) + text[i + 1 :]
        else:
            text = text[:i]
    return text


def _jsonl_text(tmp_path) -> str:
    db = tmp_path / "src.duckdb"
    write_measured(db, measured_run("r-1", "tiny_base"))
    return export_selection(db, None, "jsonl")


@settings(max_examples=300, deadline=None)
@given(mutated(REPORT))
def test_mutated_report_parses_or_is_refused(text):
    try:
        parsed = parse_markdown(text, "m.md")
    except BadInputError as exc:
        assert str(exc).startswith("m.md")
        return
    assert parsed.runs and all(p.run_id in {r.run_id for r in parsed.runs} for p in parsed.points)


def test_mutated_jsonl_parses_or_is_refused(tmp_path):
    text = _jsonl_text(tmp_path)

    @settings(max_examples=300, deadline=None)
    @given(mutated(text))
    def check(mut):
        try:
            parsed = parse_jsonl(mut, "m.jsonl")
        except BadInputError as exc:
            assert str(exc).startswith("m.jsonl")
            return
        assert parsed.points

    check()


def test_imports_are_all_or_nothing(tmp_path):
    jsonl = _jsonl_text(tmp_path)
    db = tmp_path / "target.duckdb"
    import_files(db, [REFERENCE])
    counter = iter(range(10**6))

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        st.sampled_from(["md", "jsonl"]).flatmap(
            lambda k: st.tuples(st.just(k), mutated(REPORT if k == "md" else jsonl))
        )
    )
    def check(case):
        kind, text = case
        path = tmp_path / f"in-{next(counter)}.{'md' if kind == 'md' else 'jsonl'}"
        path.write_text(text)
        before = export_selection(db, None, "jsonl")
        try:
            import_files(db, [path])
        except BadInputError:
            assert export_selection(db, None, "jsonl") == before
            return
        after = export_selection(db, None, "jsonl")
        assert after  # the import landed and the database still exports

    check()
