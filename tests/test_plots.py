"""The run report's PNG plots: right files for the data given, valid PNGs, atomic and repeatable writes."""

from __future__ import annotations

import copy

import matplotlib.image as mpimg
import pytest

from fedtune.coordinator.plots import write_plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_RUN_PLOTS = {"accuracy.png", "loss.png", "epsilon.png", "node_accuracy.png"}


def _records() -> list[dict]:
    """Round 0 (base model) + 3 training rounds, 2 nodes; node b has no ε in round 2, one metric is None."""
    records = []
    for r in range(4):
        nodes = {
            "11": {"name": "hospital-0", "status": "ok", "eval_accuracy": 0.2 + 0.1 * r, "eval_loss": 2.0 - 0.2 * r},
            "22": {"name": "hospital-1", "status": "ok", "eval_accuracy": 0.15 + 0.12 * r, "eval_loss": 2.2 - 0.3 * r},
        }
        if r > 0:
            nodes["11"]["epsilon"] = 1.5 * r
            if r != 2:
                nodes["22"]["epsilon"] = 1.2 * r
        rec = {
            "round": r, "eval_accuracy": 0.2 + 0.1 * r, "eval_loss": 2.1 - 0.25 * r,
            "eval_perplexity": 8.0 - r, "eval_rouge_l": 0.4 + 0.05 * r, "eval_macro_f1": 0.1 + 0.1 * r,
            "central_accuracy": 0.25 + 0.1 * r, "central_loss": 2.0 - 0.2 * r,
            "nodes": nodes,
        }
        if r > 0:
            rec["train_loss"] = 1.9 - 0.3 * r
        records.append(rec)
    records[2]["eval_macro_f1"] = None
    return records


COMPARISON = [
    {"setting": "base model", "dp": None, "accuracy": 0.2, "macro_f1": 0.1, "epsilon": None},
    {"setting": "local-only", "dp": True, "accuracy": 0.35, "macro_f1": None, "epsilon": 7.9},
    {"setting": "federated", "dp": True, "accuracy": 0.5, "macro_f1": 0.4, "epsilon": 7.9},
    {"setting": "centralized", "dp": False, "accuracy": 1.0, "macro_f1": 0.9, "epsilon": None},
]


def _check_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 5 * 1024, (path, len(data))
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert 300 <= img.shape[0] <= 1000 and 400 <= img.shape[1] <= 1200, img.shape


def _no_temporaries(folder):
    leftovers = [p.name for p in folder.iterdir() if p.suffix != ".png" or p.name.startswith(".")]
    assert leftovers == []


def test_run_plots_without_comparison(tmp_path):
    out = tmp_path / "plots" / "nested"  # created on demand
    paths = write_plots(_records(), out)
    assert [p.name for p in paths] == ["accuracy.png", "loss.png", "epsilon.png", "node_accuracy.png"]
    assert {p.name for p in out.iterdir()} == ALL_RUN_PLOTS
    for p in paths:
        assert p.parent == out
        _check_png(p)
    _no_temporaries(out)


def test_run_plots_with_comparison(tmp_path):
    paths = write_plots(_records(), str(tmp_path), comparison=COMPARISON)
    assert [p.name for p in paths] == ["accuracy.png", "loss.png", "epsilon.png", "node_accuracy.png",
                                       "comparison.png"]
    assert {p.name for p in tmp_path.iterdir()} == ALL_RUN_PLOTS | {"comparison.png"}
    for p in paths:
        _check_png(p)
    _no_temporaries(tmp_path)


def test_no_epsilon_means_no_epsilon_plot(tmp_path):
    records = _records()
    for rec in records:
        for node in rec["nodes"].values():
            node.pop("epsilon", None)
    paths = write_plots(records, tmp_path)
    assert {p.name for p in paths} == ALL_RUN_PLOTS - {"epsilon.png"}
    assert not (tmp_path / "epsilon.png").exists()


def test_empty_records(tmp_path):
    assert write_plots([], tmp_path / "out") == []
    assert write_plots([], tmp_path / "out", comparison=[]) == []


def test_sparse_records_do_not_crash(tmp_path):
    """Missing keys, None, NaN, junk and a missing nodes map are skipped rather than raising."""
    records = [
        {"round": 0, "eval_accuracy": None, "eval_loss": float("nan")},
        {"round": 1, "eval_accuracy": "n/a", "train_loss": 1.5, "nodes": None},
        {"round": 2, "eval_accuracy": 0.3, "nodes": {"7": {"status": "failed"}, "8": "bad"}},
        {"eval_accuracy": 0.9},  # no round number
    ]
    paths = write_plots(records, tmp_path)
    assert [p.name for p in paths] == ["accuracy.png", "loss.png"]
    for p in paths:
        _check_png(p)


def test_comparison_rows_without_accuracy_are_skipped(tmp_path):
    rows = [{"setting": "federated", "dp": True, "accuracy": None}]
    assert write_plots([], tmp_path, comparison=rows) == []
    assert write_plots([], tmp_path, comparison=COMPARISON) == [tmp_path / "comparison.png"]


def test_second_call_overwrites_cleanly(tmp_path):
    first = write_plots(_records(), tmp_path, comparison=COMPARISON)
    before = {p: p.stat().st_mtime_ns for p in first}
    changed = copy.deepcopy(_records())
    for rec in changed:
        rec["eval_accuracy"] = 0.9
    second = write_plots(changed, tmp_path, comparison=COMPARISON)
    assert second == first
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in first}
    for p in second:
        _check_png(p)
        assert p.stat().st_mtime_ns >= before[p]
    _no_temporaries(tmp_path)


def test_failed_render_leaves_no_partial_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def boom(self, *args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        write_plots(_records(), tmp_path)
    assert list(tmp_path.iterdir()) == []
