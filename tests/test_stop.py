"""`fedtune stop RUN_DIR`: a request file the ServerApp reads after each completed round (the run
itself stopping is tested with a pruned tuning trial in tests/test_tune.py)."""

import json

from fedtune.cli import main as cli_main
from fedtune.coordinator.stop_request import STOP_FILE, clear_stop_request, take_stop_request


def test_stop_writes_the_request_with_its_reason_and_the_server_takes_it_once(tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps({"started": "now"}))
    assert cli_main(["stop", str(tmp_path), "--reason", "maintenance window"]) == 0
    assert "after its current round" in capsys.readouterr().out
    assert take_stop_request(tmp_path) == "maintenance window"
    assert take_stop_request(tmp_path) is None  # taken: a resumed run is not stopped again


def test_stop_refuses_a_folder_that_is_not_a_run_and_writes_nothing(tmp_path, capsys):
    assert cli_main(["stop", str(tmp_path)]) == 2
    assert "no run.json" in capsys.readouterr().err
    assert not (tmp_path / STOP_FILE).exists()


def test_a_request_left_from_before_a_start_is_cleared(tmp_path):
    (tmp_path / STOP_FILE).write_text("old\n")
    clear_stop_request(tmp_path)
    assert take_stop_request(tmp_path) is None


def test_the_round_gate_holds_a_run_until_the_decision_a_stop_or_its_timeout(tmp_path):
    import time

    from fedtune.coordinator.stop_request import close_gate, decided, open_gate, request_stop, wait_at_gate

    open_gate(tmp_path)
    t0 = time.monotonic()
    wait_at_gate(tmp_path, 1, timeout=0.5)  # nobody decided: held, then let go (a dead tuner holds nothing)
    assert 0.45 <= time.monotonic() - t0 < 5
    decided(tmp_path, 1)
    t0 = time.monotonic()
    wait_at_gate(tmp_path, 1, timeout=30)
    wait_at_gate(tmp_path, 0, timeout=30)
    request_stop(tmp_path, "pruned")
    wait_at_gate(tmp_path, 2, timeout=30)  # not decided, but a stop was requested
    close_gate(tmp_path)
    wait_at_gate(tmp_path, 3, timeout=30)  # no gate: no wait
    assert time.monotonic() - t0 < 5
