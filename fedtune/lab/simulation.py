"""Run a preset on Flower's Simulation Runtime: ``flwr run`` against a managed local SuperLink.

Each run gets its own Flower home inside the results folder (``<out>/.flwr``: the SuperLink's
state database and log stay with the results), free loopback ports (parallel runs do not
collide), runtime dependency installation disabled (it would ``uv sync`` a CUDA torch), and
the SuperLink is always stopped afterwards - also on errors and Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fedtune.common.config import ConfigError, Preset, RunConfig, load_preset
from fedtune.common.data import DataError, load_data_file, load_jsonl, partition, simulation_pool
from fedtune.common.files import FolderBusy, atomic_write_text, folder_lock
from fedtune.common.model import resolve_model_path
from fedtune.coordinator.report import read_metrics
from fedtune.coordinator.server_app import check_start

APP_DIR = Path(__file__).resolve().parents[2]  # the checkout whose pyproject.toml declares the Flower app
SAVED_PRESET = "preset.toml"  # the run's resolved configuration, written into its results folder


class SimulationError(RuntimeError):
    pass


@dataclass
class SimulationResult:
    out: Path
    metrics: list[dict]
    seconds: float
    stopped: dict | None = None  # why the run ended early (e.g. every node's privacy budget is spent)

    @property
    def first_accuracy(self) -> float:
        return self.metrics[0]["eval_accuracy"]

    @property
    def last_accuracy(self) -> float:
        return self.metrics[-1]["eval_accuracy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, float) else repr(v)  # JSON str/bool/int are valid TOML


def _toml_lines(flat: dict[str, Any]) -> str:
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in sorted(flat.items()))


def write_run_config(flat: dict[str, Any], path: Path) -> None:
    path.write_text(_toml_lines(flat), encoding="utf-8")


def flower_env(home: Path, ray_address: str = "") -> dict[str, str]:
    """``ray_address``: run the simulated nodes on that Ray cluster (Flower's Ray backend calls
    ``ray.init()``, which joins the cluster named by ``RAY_ADDRESS``) instead of a local Ray."""
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "RAY_DEDUP_LOGS": "0",
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-"),  # short: Ray's socket paths have a length limit
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # flwr spawns its tools by name
        "PYTHONUNBUFFERED": "1",
    })
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    else:
        env.pop("RAY_ADDRESS", None)  # a stray RAY_ADDRESS in the shell must not send a local run elsewhere
    return env


def _superlink_pids(db_path: Path) -> list[int]:
    """PIDs of the SuperLink serving this run's database (unique per run)."""
    out = subprocess.run(["pgrep", "-f", f"flower-superlink.*{db_path}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def stop_superlink(home: Path, timeout: float = 15.0) -> None:
    pids = _superlink_pids(home / "local-superlink" / "state.db")
    for pid in pids:
        os.kill(pid, signal.SIGTERM)  # SuperLink stops its SuperExec, the simulation and Ray
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.2)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _run_status(env: dict[str, str], cwd: Path) -> tuple[str, str]:
    out = subprocess.run(["flwr", "ls", "--format", "json"], env=env, cwd=cwd, capture_output=True, text=True)
    try:
        runs = json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError:
        return "unknown", out.stdout[-500:] + out.stderr[-500:]
    if not runs:
        return "unknown", "no run recorded"
    last = runs[-1]
    return str(last.get("status", "unknown")), str(last.get("status-details", last.get("details", "")))


def check_data(cfg: RunConfig, num_nodes: int) -> None:
    """Refuse bad data or an impossible split here, with the file's own message, before Flower starts."""
    if cfg.data.eval_file:
        load_data_file(cfg.data, cfg.data.eval_file)
    if cfg.data.canaries:
        load_jsonl(cfg.data.canaries)  # a bad canary file is refused here, with its own message
        if cfg.data.canary_node >= num_nodes:
            raise DataError(f"data.canary-node = {cfg.data.canary_node}, but the simulation has {num_nodes} nodes "
                            f"(partition ids 0..{num_nodes - 1})")
    pool, _ = simulation_pool(cfg.data)
    try:
        parts = partition(pool, num_nodes, cfg.data.partition, cfg.data.alpha, cfg.data.seed)
    except ValueError as exc:
        raise DataError(f"cannot split {cfg.data.source} across {num_nodes} nodes: {exc}") from exc
    small = [i for i, p in enumerate(parts) if len(p) < 2]
    if small:
        raise DataError(f"nodes {small} would get fewer than 2 records (one to train, one to evaluate); "
                        "use more records, fewer nodes or another data.partition")


def simulate(
    preset: str | Path | None = None, overrides: list[str] | None = None, out: str | Path | None = None,
    quiet: bool = False, resume: str | Path | None = None,
) -> SimulationResult:
    """Run a federated simulation end to end (or continue the one in ``resume``) and return where its results are."""
    if resume is not None:
        cfg, info = resume_config(resume, preset, overrides)
        return run_simulation_config(cfg, info, resume, quiet)
    cfg, info = load_preset(preset, overrides)
    return run_simulation_config(cfg, info, out, quiet)


def resume_config(out: str | Path, preset: str | Path | None, overrides: list[str] | None) -> tuple[RunConfig, Preset]:
    """The configuration to continue the run in ``out`` with: its saved ``preset.toml`` (or the given
    preset), ``--set`` overrides, ``output.resume = true``."""
    out_dir = Path(out).expanduser().resolve()
    saved = out_dir / SAVED_PRESET
    if not out_dir.is_dir():
        raise ConfigError(f"{out_dir} does not exist (or is not a folder): give the results folder of the run "
                          "to resume, e.g. runs/20261122-101500")
    if preset is None and not saved.is_file():
        raise ConfigError(f"{out_dir} has no {SAVED_PRESET}, so it is not a folder written by `fedtune simulate`; "
                          f"give the preset it was started with: fedtune simulate PRESET --resume {out}")
    cfg, info = load_preset(preset or saved, overrides)
    return dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, dir=str(out_dir), resume=True)), info


def preset_text(flat: dict[str, Any], info: Preset) -> str:
    """A full configuration as a preset file ``fedtune simulate`` reads (output settings left out)."""
    body = {k: v for k, v in flat.items() if not k.startswith("output.")}
    sim = {"nodes": info.num_nodes, **({"cpus-per-node": info.cpus_per_node} if info.cpus_per_node else {}),
           **({"gpus-per-node": info.gpus_per_node} if info.gpus_per_node else {}),
           **({"ray-address": info.ray_address} if info.ray_address else {})}
    return _toml_lines(body) + "\n[simulation]\n" + _toml_lines(sim)


def _save_preset(flat: dict[str, Any], info: Preset, path: Path) -> None:
    """The run's full configuration as a preset: what ``--resume`` reads back."""
    atomic_write_text(path, preset_text(flat, info))


def _results_folder(cfg: RunConfig, out: str | Path | None) -> Path:
    """Where the run writes, checked before anything is created there (see server_app.check_start)."""
    out_dir = Path(out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")).expanduser().resolve()
    check_start(dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, dir=str(out_dir))), out_dir)
    if out_dir.is_dir():
        try:
            with folder_lock(out_dir):
                pass  # nobody is writing there (e.g. a SuperLink that outlived a killed `fedtune simulate`)
        except FolderBusy as exc:
            raise SimulationError(str(exc)) from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the results folder {out_dir}: {exc}. Choose another --out") from exc
    return out_dir


def _fresh_superlink(home: Path) -> None:
    """Resuming: stop a SuperLink the crashed run left behind and keep its state aside (its log may matter)."""
    stop_superlink(home)
    old = home / "local-superlink"
    if old.exists():
        old.rename(home / f"local-superlink.before-resume-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def federation_config(info: Preset) -> str:
    """Flower's ``--federation-config`` for the Simulation Runtime: nodes and each node's Ray resources."""
    cpus = info.cpus_per_node or os.cpu_count() or 1
    gpus = f" client-resources-num-gpus={info.gpus_per_node}" if info.gpus_per_node else ""
    return f"num-supernodes={info.num_nodes} client-resources-num-cpus={cpus}{gpus} init-args-log-to-driver=false"


def run_simulation_config(cfg: RunConfig, info: Preset, out: str | Path | None, quiet: bool,
                          app_dir: Path = APP_DIR) -> SimulationResult:
    """``app_dir``: the Flower app to run (fedtune's own by default; benchmarks pass comparison apps)."""
    if not (app_dir / "pyproject.toml").is_file():
        raise SimulationError(f"fedtune simulate runs the Flower app from a source checkout; {app_dir} has no pyproject.toml")
    # Everything that can refuse the run is checked before anything is written: bad input leaves no trace.
    check_data(cfg, info.num_nodes)
    resolve_model_path(cfg.model.name)  # also converts/caches the model once here, not in every process
    out_dir = _results_folder(cfg, out)
    flat = cfg.to_flat()
    flat["output.dir"] = str(out_dir)
    run_config = out_dir / "run-config.toml"
    write_run_config(flat, run_config)
    _save_preset(flat, info, out_dir / SAVED_PRESET)
    home = out_dir / ".flwr"
    home.mkdir(exist_ok=True)
    if cfg.output.resume:
        _fresh_superlink(home)
    env = flower_env(home, info.ray_address)
    federation = federation_config(info)
    cmd = ["flwr", "run", str(app_dir), "--stream", "--federation-config", federation, "--run-config", str(run_config)]
    log_path = out_dir / "simulation.log"
    start = time.monotonic()
    try:
        with log_path.open("a" if cfg.output.resume else "w", encoding="utf-8") as log:
            if cfg.output.resume:
                log.write(f"\n===== fedtune simulate --resume {out_dir} ({datetime.now().isoformat(timespec='seconds')}) =====\n")
            proc = subprocess.Popen(cmd, env=env, cwd=out_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if not quiet:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            proc.wait()
        status, details = _run_status(env, out_dir)
    finally:
        stop_superlink(home)
    finished = _finished(out_dir)
    if proc.returncode != 0 or "failed" in status or finished is None:
        resume = f" Completed rounds are checkpointed: continue with fedtune simulate --resume {out_dir}" \
            if (out_dir / "checkpoint.safetensors").is_file() else ""
        raise SimulationError(
            f"simulation did not finish (flwr exit {proc.returncode}, run status {status}: {details}). "
            f"Full log: {log_path}.{resume}"
        )
    stopped = finished.get("stopped")
    if stopped and stopped["kind"] == "failure":
        raise SimulationError(f"the run stopped at round {stopped['round']}: {stopped['reason']}. Completed rounds are "
                              f"checkpointed; fix the cause, then continue with: fedtune simulate --resume {out_dir}")
    return SimulationResult(out_dir, read_metrics(out_dir / "metrics.jsonl"), time.monotonic() - start, stopped)


def _finished(out_dir: Path) -> dict | None:
    """run.json's ``finished`` entry of *this* attempt (None if the ServerApp did not get that far)."""
    try:
        run = json.loads((out_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return run.get("finished")
