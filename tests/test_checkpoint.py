"""The checkpoint file and crash-safe writes: a process that dies at any point of a write leaves the
previous checkpoint / privacy ledger intact, and a damaged file is refused with a message."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fedtune.common.config import ConfigError, RunConfig
from fedtune.coordinator.checkpoint import Checkpoint, CheckpointError, check_resumable, checkpoint_path, load_checkpoint, save_checkpoint
from fedtune.node.privacy.ledger import LedgerError, PrivacyLedger


def make_checkpoint(rnd: int, value: float = 0.0) -> Checkpoint:
    adapter = OrderedDict([("z.lora_A", np.full((2, 3), value, np.float32)), ("a.lora_B", np.arange(6, dtype=np.float32))])
    records = [{"round": r, "eval_loss": 1.0 / (r + 1), "nodes": {"7": {"status": "ok"}}} for r in range(rnd + 1)]
    return Checkpoint(rnd, adapter, OrderedDict([("z.lora_A", np.ones((2, 3), np.float32))]), records,
                      RunConfig().to_flat(), {"started": "now"})


def test_checkpoint_round_trip_keeps_order_values_and_metadata(tmp_path):
    save_checkpoint(tmp_path, make_checkpoint(3, 0.25))
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.round == 3 and list(ckpt.adapter) == ["z.lora_A", "a.lora_B"]  # module order, not sorted
    np.testing.assert_array_equal(ckpt.adapter["z.lora_A"], np.full((2, 3), 0.25, np.float32))
    np.testing.assert_array_equal(ckpt.strategy["z.lora_A"], np.ones((2, 3), np.float32))
    assert ckpt.records == make_checkpoint(3).records and ckpt.run == {"started": "now"}
    assert ckpt.config == RunConfig().to_flat()


def test_checkpoint_is_a_standard_safetensors_file(tmp_path):
    from safetensors.numpy import load_file

    save_checkpoint(tmp_path, make_checkpoint(1))
    assert sorted(load_file(checkpoint_path(tmp_path))) == ["adapter/a.lora_B", "adapter/z.lora_A", "strategy/z.lora_A"]


CRASHING_WRITER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from test_checkpoint import make_checkpoint, write_ledger_round
    from fedtune.coordinator.checkpoint import save_checkpoint
    point, what, folder = sys.argv[1:4]
    die = lambda *a, **k: os._exit(9)  # the process dies here: no cleanup, no finally
    if point == "before-fsync":
        os.fsync = die          # the new bytes are written to the temp file, not yet on disk
    elif point == "before-rename":
        os.replace = die        # the temp file is complete and synced; the rename never happens
    if what == "checkpoint":
        save_checkpoint(folder, make_checkpoint(2, 2.0))
    else:
        write_ledger_round(folder, 2)
    os._exit(0)
""")


def write_ledger_round(folder, rnd: int) -> None:
    ledger = PrivacyLedger.open(folder, "ab" * 32, "rdp", 1e-5, 100)
    ledger.record((1.0, 0.05, 10), round=rnd)


@pytest.mark.parametrize("point", ["before-fsync", "before-rename"])
@pytest.mark.parametrize("what", ["checkpoint", "ledger"])
def test_a_crash_during_a_write_leaves_the_previous_file_intact(tmp_path, point, what):
    if what == "checkpoint":
        save_checkpoint(tmp_path, make_checkpoint(1, 1.0))
    else:
        write_ledger_round(tmp_path, 1)
    script = tmp_path.parent / f"crash_{point}_{what}.py"
    script.write_text(CRASHING_WRITER.format(tests=str(Path(__file__).parent)))
    proc = subprocess.run([sys.executable, str(script), point, what, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr  # it really died mid-write
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers  # the half-done temp file is there ...
    if what == "checkpoint":  # ... but the file itself is the previous, complete one
        ckpt = load_checkpoint(tmp_path)
        assert ckpt.round == 1 and float(ckpt.adapter["z.lora_A"][0, 0]) == 1.0
        save_checkpoint(tmp_path, make_checkpoint(2, 2.0))
        assert load_checkpoint(tmp_path).round == 2
    else:
        (path,) = tmp_path.glob("privacy-ledger-*.json")
        ledger = PrivacyLedger.load(path)
        assert [r["round"] for r in ledger.rounds] == [1] and ledger.history == [(1.0, 0.05, 10)]
        write_ledger_round(tmp_path, 2)
        assert [r["round"] for r in PrivacyLedger.load(path).rounds] == [1, 2]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the next write cleans up


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(folder, make_checkpoint(2, 0.5))
    return checkpoint_path(folder).read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_truncation_or_changed_byte_is_refused_with_a_message(checkpoint_bytes, tmp_path, data):
    blob = bytearray(checkpoint_bytes)
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="keep")]
    else:
        at = data.draw(st.integers(0, len(blob) - 1), label="at")
        blob[at] ^= data.draw(st.integers(1, 255), label="xor")
    checkpoint_path(tmp_path).write_bytes(bytes(blob))
    try:
        ckpt = load_checkpoint(tmp_path)
    except CheckpointError as exc:
        assert str(exc) and str(checkpoint_path(tmp_path).name) in str(exc)
    else:  # a change that does not alter the content (e.g. one header space for another)
        assert ckpt.round == 2 and ckpt.records == make_checkpoint(2).records
        np.testing.assert_array_equal(ckpt.adapter["z.lora_A"], np.full((2, 3), 0.5, np.float32))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 400))
def test_a_truncated_ledger_is_refused_with_a_message(tmp_path, cut):
    write_ledger_round(tmp_path, 1)
    (path,) = tmp_path.glob("privacy-ledger-*.json")
    text = path.read_text()
    path.write_text(text[: min(cut, len(text) - 2)])
    with pytest.raises(LedgerError, match="unreadable"):
        PrivacyLedger.open(tmp_path, "ab" * 32, "rdp", 1e-5, 100)
    path.write_text(text)


def test_missing_or_foreign_folders_say_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="finished no round there yet"):
        load_checkpoint(tmp_path)
    checkpoint_path(tmp_path).mkdir()  # not a file
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_resume_accepts_only_changes_that_do_not_alter_what_is_learned():
    saved = RunConfig().to_flat()
    check_resumable(saved, {**saved, "federation.rounds": 9, "federation.round-timeout": 5.0}, done=3)
    with pytest.raises(ConfigError, match="train.lr: checkpoint 0.01, now 0.02"):
        check_resumable(saved, {**saved, "train.lr": 0.02}, done=3)
    with pytest.raises(ConfigError, match="federation.rounds >= 3"):
        check_resumable(saved, {**saved, "federation.rounds": 2}, done=3)


def test_a_ledger_state_dir_that_is_a_file_gets_a_message(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("not a folder")
    with pytest.raises(LedgerError, match="cannot create the node state directory"):
        PrivacyLedger.open(blocker / "node", "ab" * 32, "rdp", 1e-5, 100)
    assert blocker.read_text() == "not a folder"


def test_checkpoint_benchmark_runs_and_prints_its_ratios(tiny_model_dir):
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "checkpoint_cost.py"
    proc = subprocess.run([sys.executable, str(script), "--model", str(tiny_model_dir), "--rounds", "2", "--nodes", "2",
                           "--repeat", "1", "--set", "lora.top-layers=1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = dict(kv.split("=") for kv in proc.stdout.strip().splitlines()[-1].split())
    assert set(last) == {"checkpoint_save_vs_train_step", "checkpoint_save_vs_peft_export",
                         "checkpoint_bytes_vs_adapter_bytes"}
    assert float(last["checkpoint_bytes_vs_adapter_bytes"]) > 2  # adapter + velocity + metrics
