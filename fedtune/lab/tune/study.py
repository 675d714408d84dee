"""``fedtune tune``: an Optuna study whose trials are Flower simulations of one preset.

The study lives in an Optuna storage (a SQLite file in the study folder by default; any Optuna RDB
URL, e.g. PostgreSQL, lets several machines run trials of one study at once).  ``--trials N`` is
the study's total: running the same command again - after a crash, a Ctrl-C, or on a second
machine - continues it until N trials have completed or been pruned.  A trial whose worker died
is marked failed and run again once: at once when the worker was on this machine (its process is
gone), otherwise when its heartbeat is older than the grace period.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from fedtune.common.config import ConfigError, Preset, RunConfig
from fedtune.lab.simulation import SimulationError
from fedtune.lab.tune.results import progress_line, write_results
from fedtune.lab.tune.space import TuneSpec, parse_tune
from fedtune.lab.tune.trial import Runner, final_values, run_trial, simulate_quietly, trial_config

HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120


@contextlib.contextmanager
def _experimental_ok() -> Iterator[None]:
    """Heartbeats and their retry callback are marked experimental by Optuna (present since 2.8)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class TuneJob:
    """What one ``fedtune tune`` process works on."""

    cfg: RunConfig
    info: Preset
    spec: TuneSpec
    name: str
    folder: Path
    storage: str
    trials: int
    timeout_minutes: float | None = None


def make_job(cfg: RunConfig, info: Preset, trials: int, folder: str | Path | None = None, storage: str | None = None,
             name: str | None = None, timeout_minutes: float | None = None) -> TuneJob:
    if not info.tune:
        raise ConfigError(f"{info.path or 'the preset'} has no [tune] table: add one with a [tune.space] of the keys to "
                          "search (see docs/guides/tuning.md)")
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if timeout_minutes is not None and timeout_minutes <= 0:
        raise ConfigError(f"--timeout must be a positive number of minutes, got {timeout_minutes}")
    spec = parse_tune(info.tune, cfg.to_flat())
    name = name or (info.path.stem if info.path else "study")
    out = Path(folder or Path("runs") / f"tune-{name}").expanduser().resolve()
    return TuneJob(cfg, info, spec, name, out, storage or f"sqlite:///{out / 'study.db'}", trials, timeout_minutes)


def _pruner(spec: TuneSpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        startup = spec.startup_trials or 2
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=spec.prune_from_round)
    if spec.pruner == "threshold":
        return optuna.pruners.ThresholdPruner(lower=spec.prune_below, upper=spec.prune_above,
                                              n_warmup_steps=spec.prune_from_round)
    return optuna.pruners.NopPruner()


def _storage(url: str, pauses: tuple[float, ...] = (0.5, 1.0, 1.5)) -> RDBStorage:
    """Optuna's RDB storage; on a fresh database, workers that start together all create its schema, and all
    but one fail on the duplicate version row: those pause and try again, and find the schema made."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for pause in pauses:
        try:
            return _rdb_storage(url)
        except (IntegrityError, OperationalError):  # a concurrent schema creation (or a locked SQLite file)
            time.sleep(pause)
    return _rdb_storage(url)  # the last try: its error is the caller's


def _rdb_storage(url: str) -> RDBStorage:
    with _experimental_ok():
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))


def open_study(job: TuneJob) -> optuna.Study:
    job.folder.mkdir(parents=True, exist_ok=True)
    try:
        storage = _storage(job.storage)
    except Exception as exc:  # SQLAlchemy's errors: bad URL, missing driver, server unreachable
        raise ConfigError(f"cannot open the study storage {redact(job.storage)}: {exc}") from None
    startup = job.spec.startup_trials or max(2, job.trials // 3)
    sampler = optuna.samplers.TPESampler(seed=job.spec.seed, n_startup_trials=startup)
    study = optuna.create_study(study_name=job.name, storage=storage, directions=job.spec.directions,
                                sampler=sampler, pruner=_pruner(job.spec), load_if_exists=True)
    saved = study.user_attrs.get("objectives")
    if saved is not None and list(saved) != list(job.spec.objectives):
        raise ConfigError(f"study {job.name!r} in {redact(job.storage)} optimises {saved}, this [tune] table "
                          f"{list(job.spec.objectives)}: use another --study name or --out folder")
    study.set_user_attr("objectives", list(job.spec.objectives))
    return study


def redact(url: str) -> str:
    """A storage URL without its password (it goes into logs and the report)."""
    head, sep, tail = url.partition("://")
    if "@" not in tail:
        return url
    cred, host = tail.rsplit("@", 1)
    return f"{head}{sep}{cred.split(':', 1)[0]}:***@{host}"


def fail_dead_local_trials(study: optuna.Study) -> list[int]:
    """Running trials whose worker was a process on this machine that no longer exists: failed, retried once."""
    host, failed = socket.gethostname(), []
    with _experimental_ok():
        retry = RetryHeartbeatStaleTrialCallback(max_retry=1)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") != host or _alive(int(worker.get("pid", 0))):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "error", "its worker process died")
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        retry(study, study._storage.get_trial(t._trial_id))
        failed.append(t.number)
    return failed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def enqueue_baseline(study: optuna.Study, job: TuneJob) -> None:
    """Trial 0 of a new study: the preset's own values (those inside the space), the configuration to beat."""
    if not job.spec.baseline_first or study.get_trials(deepcopy=False):
        return
    flat = job.cfg.to_flat()
    values = {p.key: flat[p.key] for p in job.spec.params if p.contains(flat[p.key])}
    if values:
        study.enqueue_trial(values, user_attrs={"baseline": True}, skip_if_exists=True)


def counted(study: optuna.Study) -> int:
    """Trials that count towards --trials: finished, or running somewhere (so workers do not overshoot)."""
    return len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


def make_objective(job: TuneJob, runner: Runner, print_line: Callable[[str], None]) -> Callable[[optuna.Trial], Any]:
    def objective(trial: optuna.Trial) -> Any:
        values = {p.key: p.suggest(trial) for p in job.spec.params}
        out = job.folder / f"trial-{trial.number:04d}"
        print_line(f"trial {trial.number} started | " + " ".join(f"{k}={v}" for k, v in values.items()) + f" | {out}")
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        trial.set_user_attr("out", str(out))
        try:
            result, watcher = run_trial(trial, trial_config(job.cfg.to_flat(), values), job.info, out,
                                        job.spec.objectives, job.spec.pruner != "none", runner)
        except (SimulationError, ConfigError) as exc:
            trial.set_user_attr("error", str(exc)[:2000])
            raise
        trial.set_user_attr("seconds", round(result.seconds, 1))
        trial.set_user_attr("rounds", result.metrics[-1]["round"])
        if watcher.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after round {watcher.pruned_at}")
        return final_values(result.metrics, result.seconds, job.spec.objectives)
    return objective


def _after_trial(job: TuneJob, print_line: Callable[[str], None]) -> Callable[[optuna.Study, Any], None]:
    def callback(study: optuna.Study, trial) -> None:
        print_line(progress_line(trial, job.spec))
        write_results(study, job)
        failures = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        if counted(study) >= job.trials or failures >= job.trials:
            study.stop()
    return callback


def run_study(job: TuneJob, runner: Runner = simulate_quietly, print_line: Callable[[str], None] = print) -> optuna.Study:
    """Run trials until the study holds ``job.trials`` finished ones (or the timeout); write the results."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial says it all
    study = open_study(job)
    for n in fail_dead_local_trials(study):
        print_line(f"trial {n}: its worker process died; marked failed, to be run again")
    enqueue_baseline(study, job)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    print_line(f"study {job.name!r} ({redact(job.storage)}): {done} of {job.trials} trials done; "
               f"results in {job.folder}")
    start = time.monotonic()
    if counted(study) < job.trials:
        timeout = job.timeout_minutes * 60 if job.timeout_minutes else None
        with _experimental_ok():  # a failed trial is recorded with its reason and the study goes on
            study.optimize(make_objective(job, runner, print_line), timeout=timeout,
                           catch=(SimulationError, ConfigError, ValueError), callbacks=[_after_trial(job, print_line)])
    write_results(study, job)
    print_line(f"study {job.name!r}: {len(study.get_trials(deepcopy=False, states=FINISHED))} trials done "
               f"({time.monotonic() - start:.0f} s in this process). Report: {job.folder / 'tune-report.md'}")
    return study
