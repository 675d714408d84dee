"""`fedtune tune`: Optuna studies whose trials are federated runs (tiny model).

One study goes through the real command and Flower's Simulation Runtime; the pruning, crash and
multi-worker tests run their trials in-process (tests/tune_worker.py: the real ServerApp loop and
ClientApps over tests/loopback.py) so that a trial costs seconds, with the real study machinery.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from fedtune.cli import main as cli_main
from fedtune.common.config import ConfigError, load_preset
from fedtune.coordinator.checkpoint import load_checkpoint
from fedtune.coordinator.report import read_metrics
from fedtune.lab.tune.results import trials_table
from fedtune.lab.tune.space import Param, TuneSpec, parse_tune
from fedtune.lab.tune.study import make_job, open_study, redact, run_study
from fedtune.lab.tune.trial import final_values, round_value

from tune_worker import loopback_runner

WORKER = Path(__file__).resolve().parent / "tune_worker.py"

PRESET = """
[simulation]
nodes = 3
cpus-per-node = 1
[model]
name = {model}
precision = "fp32"
[lora]
r = 4
[data]
records = 60
[train]
local-steps = 2
batch-size = 4
[federation]
rounds = {rounds}
min-nodes = 3
[privacy]
enabled = true
target-epsilon = 8.0
[tune]
{tune}
[tune.space]
"train.lr" = {{ low = 0.001, high = 0.1, log = true }}
"lora.r" = {{ choices = [2, 4] }}
"""


def write_preset(folder: Path, model: Path, rounds: int = 2, tune: str = 'objective = "eval_loss"\npruner = "none"') -> Path:
    path = folder / "tiny.toml"
    path.write_text(PRESET.format(model=json.dumps(str(model)), rounds=rounds, tune=tune))
    return path


def load_study(folder: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")


def base_flat(tiny_model_dir) -> dict:
    cfg, _ = load_preset(None, [f"model.name={json.dumps(str(tiny_model_dir))}"])
    return cfg.to_flat()


@pytest.mark.parametrize("space, named", [
    ('"train.lrr" = { low = 0.001, high = 0.1 }', "train.lrr"),  # unknown key (with a suggestion)
    ('"train.lr" = { low = 0.1, high = 0.1 }', "train.lr"),  # empty range
    ('"train.lr" = { low = 0.1, high = 0.01 }', "train.lr"),  # reversed range
    ('"lora.r" = { low = 1.5, high = 8 }', "lora.r"),  # an integer key with a fractional bound
    ('"train.lr" = { choices = ["fast"] }', "train.lr"),  # wrong type
    ('"model.precision" = { low = 1, high = 2 }', "model.precision"),  # a range on a string key
    ('"train.lr" = { low = 0.0, high = 0.1, log = true }', "train.lr"),  # log scale from 0
    ('"train.lr" = { lo = 0.001, high = 0.1 }', "train.lr"),  # unknown field
    ('"lora.r" = { choices = [] }', "lora.r"),  # no choices
    ('"train.eval-method" = { choices = ["labels", "guess"] }', "train.eval-method"),  # a value the run refuses
    ('"output.dir" = { choices = ["a", "b"] }', "output.dir"),  # chosen by fedtune tune itself
])
def test_a_bad_tune_space_is_refused_with_a_message_naming_the_key(tiny_model_dir, space, named):
    table = tomllib.loads(f"[space]\n{space}\n")
    with pytest.raises(ConfigError, match=f'"{named}"'):
        parse_tune(table, base_flat(tiny_model_dir))


@pytest.mark.parametrize("extra, named", [
    ('objective = "accuracy"', "objective"),
    ("pruner = \"hyperband\"", "pruner"),
    ("trails = 3", "trails"),
    ('objective = "epsilon"', "epsilon"),  # ε as an objective without searching ε
    ('pruner = "threshold"', "prune-below"),
])
def test_a_bad_tune_table_is_refused_with_a_message_naming_the_key(tiny_model_dir, extra, named):
    table = tomllib.loads(f'{extra}\n[space]\n"train.lr" = {{ low = 0.001, high = 0.1 }}\n')
    with pytest.raises(ConfigError, match=named):
        parse_tune(table, base_flat(tiny_model_dir))


def test_a_preset_without_a_tune_table_is_refused_before_any_trial(tiny_model_dir, tmp_path):
    cfg, info = load_preset(None, [f"model.name={json.dumps(str(tiny_model_dir))}"])
    with pytest.raises(ConfigError, match=r"\[tune\]"):
        make_job(cfg, info, 3, tmp_path / "study")
    assert not (tmp_path / "study").exists()


def test_objectives_read_the_last_round_and_the_largest_epsilon_any_node_reported():
    records = [{"round": 0, "eval_accuracy": 0.3, "nodes": {}},
               {"round": 1, "eval_accuracy": 0.5, "nodes": {"a": {"epsilon": 4.0}, "b": {"epsilon": 5.5}}},
               {"round": 2, "eval_accuracy": 0.7, "nodes": {"a": {"epsilon": 7.9}, "b": {"status": "skipped"}}}]
    assert final_values(records, 12.34, ["eval_accuracy", "epsilon", "seconds"]) == [0.7, 7.9, 12.3]
    assert round_value(records[1], "epsilon") == 5.5
    with pytest.raises(ValueError, match="eval_macro_f1"):
        final_values(records, 1.0, ["eval_macro_f1"])


def test_the_trials_table_shows_sampled_floats_to_four_significant_digits():
    spec = TuneSpec((Param("train.lr", float, 0.001, 0.1, log=True), Param("lora.r", int, choices=(2, 4))))
    trial = optuna.trial.create_trial(
        params={"train.lr": 0.050867221182929204, "lora.r": 4}, value=0.7,
        distributions={"train.lr": optuna.distributions.FloatDistribution(0.001, 0.1, log=True),
                       "lora.r": optuna.distributions.CategoricalDistribution((2, 4))})
    row = trials_table([trial], spec)[2]
    assert "| 0.05087 | 4 | 70.0% |" in row and "0.050867" not in row


def test_a_storage_password_never_reaches_logs_or_the_report():
    assert redact("postgresql://tuner:s3cret@db.example:5432/fedtune") == "postgresql://tuner:***@db.example:5432/fedtune"
    assert redact("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"


@pytest.mark.simulation
def test_a_two_trial_study_runs_end_to_end_on_flowers_simulation_runtime(tiny_model_dir, tmp_path, capsys):
    preset = write_preset(tmp_path, tiny_model_dir, rounds=1)
    light = ["--set", "simulation.nodes=2", "--set", "federation.min-nodes=2", "--set", "secagg.enabled=false"]
    assert cli_main(["tune", str(preset), "--trials", "2", "--out", str(tmp_path / "study"), *light]) == 0
    out = capsys.readouterr().out
    study = load_study(tmp_path / "study")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2 and len(study.trials) == 2
    assert trials[0].params == {"train.lr": 0.01, "lora.r": 4}  # trial 0: the preset's own values
    for t in trials:  # one line per trial; each trial its own complete federated run
        assert f"trial {t.number} complete" in out
        run = Path(t.user_attrs["out"])
        assert read_metrics(run / "metrics.jsonl")[-1]["eval_loss"] == pytest.approx(t.value)
        assert (run / "adapter" / "adapter_config.json").is_file() and (run / "report.md").is_file()
        ran = tomllib.loads((run / "run-config.toml").read_text())  # what the federation was given
        assert (ran["train"]["lr"], ran["lora"]["r"]) == (pytest.approx(t.params["train.lr"]), t.params["lora.r"])
    report = (tmp_path / "study" / "tune-report.md").read_text()
    assert "| 0 (preset) | complete |" in report and "## Privacy" in report
    assert (tmp_path / "study" / "plots" / "optimization-history.png").stat().st_size > 1000
    best_cfg, best_info = load_preset(tmp_path / "study" / "best.toml")  # a preset `fedtune simulate` accepts
    assert best_cfg.train.lr == pytest.approx(study.best_trial.params["train.lr"])
    assert best_cfg.lora.r == study.best_trial.params["lora.r"] and best_info.num_nodes == 2


def test_a_pruned_trial_stops_its_federation_after_the_round_with_a_complete_results_folder(tiny_model_dir, tmp_path):
    # Every eval loss is above 0, so the threshold pruner prunes each trial at its first report (round 1).
    tune = 'objective = "eval_loss"\npruner = "threshold"\nprune-above = 0.0'
    cfg, info = load_preset(write_preset(tmp_path, tiny_model_dir, rounds=4, tune=tune))
    study = run_study(make_job(cfg, info, 1, tmp_path / "study"), runner=loopback_runner, print_line=lambda _: None)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and 1 in trial.intermediate_values
    run = Path(trial.user_attrs["out"])
    finished = json.loads((run / "run.json").read_text())["finished"]
    assert finished["stopped"]["kind"] == "requested" and "pruned" in finished["stopped"]["reason"]
    rounds = [m["round"] for m in read_metrics(run / "metrics.jsonl")]
    assert rounds == [0, 1]  # held at the round gate until the decision: stopped right after round 1
    assert load_checkpoint(run).round == rounds[-1]  # resumable from where it stopped
    assert (run / "adapter" / "adapter_config.json").is_file() and "stopped after round" in (run / "report.md").read_text()
    assert not (run / "stop-request").exists() and not (run / "round-gate").exists()


def _run_worker(preset: Path, folder: Path, trials: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(preset), str(folder), str(trials)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(predicate, worker: subprocess.Popen, timeout: float = 240) -> None:
    """Poll (once a second: the worker shares the SQLite file) until ``predicate``; fail with the worker's
    output if it ends first, since then the predicate can never hold."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if worker.poll() is not None:
            pytest.fail(f"the worker ended (exit {worker.returncode}) before the awaited state:\n"
                        f"{worker.stdout.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(1.0)


def test_a_study_continues_with_the_same_command_after_its_process_is_killed(tiny_model_dir, tmp_path):
    preset, folder = write_preset(tmp_path, tiny_model_dir, rounds=1), tmp_path / "study"
    worker = _run_worker(preset, folder, 3)

    def one_done_one_running() -> bool:
        if not (folder / "study.db").exists():
            return False
        try:
            trials = load_study(folder).trials
        except (KeyError, SQLAlchemyError):  # the worker has not created the study (or its schema) yet
            return False
        return (sum(t.state == TrialState.COMPLETE for t in trials) >= 1
                and any(t.state == TrialState.RUNNING and "out" in t.user_attrs for t in trials))
    _wait_for(one_done_one_running, worker)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    killed = next(t for t in load_study(folder).trials if t.state == TrialState.RUNNING)

    again = _run_worker(preset, folder, 3)
    log = again.communicate(timeout=300)[0]
    assert again.returncode == 0, log
    trials = load_study(folder).trials
    assert f"trial {killed.number}: its worker process died" in log
    assert trials[killed.number].state == TrialState.FAIL  # not left "running" forever
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params and retried[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3  # the study's total, not 3 more
    assert "best.toml" in os.listdir(folder) and f"| {killed.number} | fail |" in (folder / "tune-report.md").read_text()


def test_a_worker_that_loses_the_race_to_create_a_fresh_storage_retries_and_opens_the_study(
        tiny_model_dir, tmp_path, monkeypatch):
    """Workers started together on a fresh database all create Optuna's schema; all but one fail on the
    duplicate version row (seen in CI: UNIQUE constraint failed: alembic_version.version_num). Here the
    first attempt fails that way; the worker must retry and open the study, not give up."""
    from sqlalchemy.exc import IntegrityError

    from fedtune.lab.tune import study as study_module

    preset, folder = write_preset(tmp_path, tiny_model_dir, rounds=1), tmp_path / "study"
    cfg, info = load_preset(preset)
    real, calls = study_module.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:  # what the losing worker sees while the winner inserts the version row
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(study_module, "RDBStorage", racing)
    study = open_study(make_job(cfg, info, 2, folder))
    assert len(calls) == 2 and study.trials == []
    assert load_study(folder).user_attrs["objectives"]  # the study really exists in the shared storage


def test_two_worker_processes_share_one_study_and_run_each_trial_once(tiny_model_dir, tmp_path):
    preset, folder = write_preset(tmp_path, tiny_model_dir, rounds=1), tmp_path / "study"
    cfg, info = load_preset(preset)
    open_study(make_job(cfg, info, 4, folder))  # the storage exists before both workers start at once
    first, second = _run_worker(preset, folder, 4), _run_worker(preset, folder, 4)
    logs = [w.communicate(timeout=400)[0] for w in (first, second)]
    assert [w.returncode for w in (first, second)] == [0, 0], logs
    trials = load_study(folder).trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 4 <= len(done) <= 5  # at most one extra: a worker may start its last trial as the other finishes
    assert len({t.user_attrs["out"] for t in trials}) == len(trials)  # one folder per trial, none shared
    assert {t.user_attrs["worker"]["pid"] for t in done} == {first.pid, second.pid}  # both did work
    for t in done:
        assert read_metrics(Path(t.user_attrs["out"]) / "metrics.jsonl")[-1]["eval_loss"] == pytest.approx(t.value)


def test_every_shipped_preset_with_a_tune_table_is_valid():
    root = Path(__file__).resolve().parent.parent / "simulations"
    tuned = 0
    for preset in sorted(root.glob("*.toml")):
        cfg, info = load_preset(preset)
        if info.tune:
            spec = make_job(cfg, info, 8, Path("unused")).spec
            assert spec.params and all(p.contains(cfg.to_flat()[p.key]) for p in spec.params)  # trial 0 = the preset
            tuned += 1
    assert tuned >= 1
