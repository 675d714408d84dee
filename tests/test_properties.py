"""Property-based tests (hypothesis): whatever malformed records, files and configs the loaders and
validators are fed, they either accept the input or refuse it with their own error and a message
that names the problem - never an uncaught exception."""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from fedtune.common.config import ConfigError, DataConfig, RunConfig, load_preset, parse_assignment
from fedtune.common.data import DataError, RecordSpec, load_examples, read_examples
from fedtune.common.data.check import check_file

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = sorted(RunConfig().to_flat())

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["", "0", "-1", "true", "nan", "1e999", "auto", "chat", "rdp", "hooks"]),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.floats(allow_nan=False), st.text(max_size=15)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)
field_names = st.sampled_from(["messages", "role", "content", "text", "label", "prompt", "completion", "instruction",
                               "input", "output", "group"]) | st.text(max_size=8)
records = st.dictionaries(field_names, json_values | st.lists(st.dictionaries(
    st.sampled_from(["role", "content", "x"]), json_values | st.sampled_from(["user", "assistant", "system", "hi"]),
    max_size=3), max_size=4), max_size=5)

words = st.text(alphabet=string.ascii_letters + " éü", min_size=0, max_size=12)
plausible = st.one_of(  # near-valid records of each format, with fields that may be empty, missing or odd
    st.builds(lambda q, a, sys: {"messages": ([{"role": "system", "content": sys}] if sys else [])
                                 + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
              words, words, st.none() | words),
    st.builds(lambda i, x, o: {"instruction": i, "input": x, "output": o}, words, st.none() | words | st.integers(), words),
    st.builds(lambda p, c: {"prompt": p, "completion": c}, words, words | st.none()),
    st.builds(lambda t, lab: {"text": t, "label": lab}, words, st.sampled_from(["a", "b", "", 3, True, None, [1]])),
)


def assert_explained(exc: Exception) -> None:
    text = str(exc)
    assert text.strip() and len(text) > 15, f"unhelpful message: {text!r}"


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=12), scalars, max_size=6))
def test_run_config_accepts_or_explains(flat):
    try:
        cfg = RunConfig.from_flat(flat)
    except ConfigError as exc:
        event("refused")
        assert_explained(exc)
        key = next((k for k in flat if k in str(exc)), None)
        assert key is not None or "target-epsilon" in str(exc) or "min-nodes" in str(exc) or "target-modules" in str(exc) \
            or "group-column" in str(exc) or "precision" in str(exc), f"message names no key: {exc}"
    else:
        event("accepted")
        assert RunConfig.from_flat(cfg.to_flat()) == cfg  # what was accepted is valid as a whole


@SETTINGS
@given(st.lists(st.text(alphabet=string.printable, max_size=30), max_size=4))
def test_set_overrides_are_accepted_or_explained(items):
    try:
        for item in items:
            parse_assignment(item)
        load_preset(None, items)
    except ConfigError as exc:
        assert_explained(exc)


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=300) | st.builds(lambda d: "\n".join(f"{k} = {json.dumps(v)}" for k, v in d.items()),
                                         st.dictionaries(st.sampled_from(KEYS + ["simulation.nodes", "bogus.key"]),
                                                         st.one_of(st.integers(-5, 5), st.text(max_size=5)), max_size=4)))
def test_preset_files_are_accepted_or_explained(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "preset.toml"
        path.write_text(text, encoding="utf-8")
        try:
            load_preset(path)
        except ConfigError as exc:
            assert_explained(exc)


def _jsonl(rows) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


@SETTINGS
@given(st.one_of(
    st.lists(records, min_size=0, max_size=6).map(_jsonl),
    st.lists(plausible, min_size=1, max_size=6).map(_jsonl),
    st.binary(max_size=200),
    st.lists(st.text(max_size=40), max_size=5).map(lambda lines: "\n".join(lines).encode()),
), st.sampled_from(["auto", "chat", "instruction", "prompt-completion", "classification"]))
def test_jsonl_records_are_loaded_or_every_problem_is_explained(content, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_bytes(content)
        spec = RecordSpec.from_config(DataConfig(format=fmt))
        try:
            data = read_examples(path, spec)
        except DataError as exc:
            event("file refused")
            assert_explained(exc)
            return
        for problem in data.problems:  # every bad record named, with what is wrong
            assert problem.where.startswith("line ") and problem.message.strip()
        try:
            loaded = load_examples(path, spec)
        except DataError as exc:
            event("records refused")
            assert_explained(exc)
            assert all(p.where in str(exc) for p in data.errors[:5])
        else:
            event("loaded")
            assert loaded.examples and not loaded.errors
        check_file(path, spec)  # `fedtune data check` reports on anything that reads at all


@SETTINGS
@given(st.lists(st.lists(st.text(alphabet=string.printable + "éü\"", max_size=12), min_size=0, max_size=4),
                max_size=6))
def test_csv_files_are_loaded_or_explained(rows):
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.csv"
        path.write_text(buf.getvalue(), encoding="utf-8")
        try:
            load_examples(path, RecordSpec.from_config(DataConfig(format="classification")))
            event("loaded")
        except DataError as exc:
            event("refused")
            assert_explained(exc)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_parquet_is_explained(blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.parquet"
        path.write_bytes(b"PAR1" + blob)
        with pytest.raises(DataError) as info:
            load_examples(path)
        assert_explained(info.value)
