"""The coordinator's Flower ServerApp: a run of rounds that survives crashes and failing nodes.

Round 0 evaluates the initial adapter (LoRA B = 0, identical to the base model) so the gain is
visible; rounds 1..R train (``rounds.py``).  After every completed round the checkpoint is
replaced atomically and *then* the round's metrics line is appended, so a run killed at any
moment resumes (``output.resume = true``; ``fedtune simulate --resume DIR``) from its last
completed round with nothing lost and nothing done twice.

A round in which fewer than ``federation.min-nodes`` nodes deliver a usable update is retried
(``federation.round-retries``, each retry after waiting for enough nodes); if it still fails, or
too few nodes have privacy budget left, the run stops cleanly: report and adapter of the completed
rounds, the reason in ``run.json`` and the report, the checkpoint ready to resume.
Results: ``metrics.jsonl``, ``report.md`` (+ plots), ``checkpoint.safetensors``, ``adapter/``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from logging import ERROR, INFO, WARNING
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedtune.common.adapters import AdapterMismatch, check_arrays, export_adapter
from fedtune.common.config import ConfigError, RunConfig
from fedtune.common.files import folder_lock
from fedtune.coordinator.checkpoint import Checkpoint, CheckpointError, check_resumable, checkpoint_path, load_checkpoint, save_checkpoint
from fedtune.coordinator.grid import wait_for_nodes
from fedtune.coordinator.report import RunRecorder
from fedtune.coordinator.rounds import Coordinator, adapter_meta
from fedtune.coordinator.tracking import Tracker, check_tracker, open_tracker, round_scalars
from fedtune.coordinator.stop_request import clear_stop_request, take_stop_request, wait_at_gate

app = ServerApp()


@dataclass
class Stop:
    """Why a run ended before its last round. ``budget``: no node may train any more (a normal end);
    ``failure``: a round kept failing - fix the cause and resume; ``requested``: someone asked for it
    (``stop_request.py``) and ``round`` is the last completed round."""

    round: int
    kind: str
    reason: str


def results_dir(cfg: RunConfig) -> Path:
    if cfg.output.dir:
        return Path(cfg.output.dir).expanduser().resolve()
    return (Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _failures(nodes: dict) -> dict[str, str]:
    return {n.get("name", nid): str(n.get("error", n.get("status"))) for nid, n in nodes.items()
            if n.get("status") not in (None, "ok")}


def run_round(coord: Coordinator, rnd: int) -> tuple[dict | None, Stop | None]:
    """Train round ``rnd`` (retrying it if too few nodes delivered) and evaluate the new adapter."""
    fed, failed = coord.cfg.federation, []
    for attempt in range(fed.round_retries + 1):
        nodes: dict = {}
        summary = coord.train(rnd, nodes, attempt)
        if summary["aggregated"]:  # the strategy stepped the global adapter
            summary.update(coord.evaluate(rnd, nodes))
            return {"round": rnd, **summary, "nodes": nodes, **({"retries": failed} if failed else {})}, None
        failed.append({"attempt": attempt, "aggregation": summary["aggregation"], "reason": summary["reason"],
                       "failures": _failures(nodes)})
        eligible = coord.eligible()
        if len(eligible) < fed.min_nodes and coord.exhausted:
            return None, Stop(rnd, "budget", f"only {len(eligible)} nodes still have privacy budget to train "
                                              f"(< federation.min-nodes {fed.min_nodes}); every other node's "
                                              "privacy budget is spent")
        if attempt < fed.round_retries:
            log(WARNING, "[round %d] %s; retrying (%d of %d)", rnd, summary["reason"], attempt + 1, fed.round_retries)
            try:
                wait_for_nodes(coord.grid, fed.min_nodes, fed.node_wait_timeout)
            except TimeoutError as exc:
                return None, Stop(rnd, "failure", f"round {rnd}: {summary['reason']}, and then {exc}")
    nodes_said = "; ".join(f"{k}: {v}" for k, v in failed[-1]["failures"].items())[:1000]
    return None, Stop(rnd, "failure", f"round {rnd} failed {len(failed)} times (last: {failed[-1]['reason']})"
                                      + (f". Node failures: {nodes_said}" if nodes_said else ""))


GATE_TIMEOUT_SECONDS = 120.0


def _requested_stop(out: Path, rnd: int, rounds: int) -> Stop | None:
    if rnd >= rounds:
        return None  # after the last round the run ends anyway
    wait_at_gate(out, rnd, GATE_TIMEOUT_SECONDS)  # a tuner deciding whether to prune (stop_request.py)
    reason = take_stop_request(out)
    return Stop(rnd, "requested", reason) if reason else None


def check_start(cfg: RunConfig, out: Path) -> None:
    """Everything that can refuse to start or resume, checked before anything is written."""
    check_tracker(cfg.output.tracking)
    if cfg.output.resume:
        ckpt = load_checkpoint(out)
        check_resumable(ckpt.config, cfg.to_flat(), ckpt.round)
    elif checkpoint_path(out).exists():
        raise ConfigError(f"{out} already holds a run (it has {checkpoint_path(out).name}). Continue it with "
                          "output.resume=true (fedtune simulate --resume DIR), or choose another output.dir")
    elif out.exists() and not out.is_dir():
        raise ConfigError(f"output.dir {out} exists and is not a folder; choose another output.dir")


def _restore(coord: Coordinator, out: Path, cfg: RunConfig) -> Checkpoint:
    ckpt = load_checkpoint(out)  # again, under the lock: the folder is ours now
    check_resumable(ckpt.config, cfg.to_flat(), ckpt.round)
    try:
        check_arrays(coord.global_arrays, ckpt.adapter)
        coord.strategy.check_state(coord.global_arrays, ckpt.strategy)  # names may be prefixed (m/, v/)
    except AdapterMismatch as exc:
        raise CheckpointError(f"the adapter or {cfg.federation.strategy} state in {checkpoint_path(out)} does not "
                              f"fit this model, LoRA and strategy configuration: {exc}") from exc
    coord.global_arrays = ckpt.adapter
    coord.strategy.load_state_arrays(ckpt.strategy)
    return ckpt


def run_federation(grid: Grid, cfg: RunConfig, out: Path, run_id: int = 0) -> Path:
    """Run (or resume) the whole federation; returns the report's path."""
    start = time.monotonic()
    check_start(cfg, out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the results folder {out}: {exc}. Choose another output.dir") from exc
    with folder_lock(out):
        clear_stop_request(out)
        coord = Coordinator(grid, cfg, run_id)
        if cfg.output.resume:
            ckpt = _restore(coord, out, cfg)
            meta = {**ckpt.run, "config": cfg.to_flat()}
            meta.pop("finished", None)
            meta["resumed"] = [*meta.get("resumed", []), {"after_round": ckpt.round, "time": _now(), "run_id": run_id}]
            recorder, first = RunRecorder(out, meta, ckpt.records), ckpt.round + 1
            log(INFO, "fedtune: resuming %s after round %d of %d", out, ckpt.round, cfg.federation.rounds)
        else:
            recorder, first = RunRecorder(out, {
                "config": cfg.to_flat(), "started": _now(), "run_id": run_id,
                "adapter_parameters": int(sum(a.size for a in coord.global_arrays.values())),
            }), 0
        log(INFO, "fedtune: results will be written to %s", out)
        node_ids = wait_for_nodes(grid, cfg.federation.min_nodes, cfg.federation.node_wait_timeout)
        recorder.meta["nodes_connected"] = len(node_ids)
        tracker = open_tracker(cfg.output.tracking, out, first)
        try:
            stop = _rounds(coord, cfg, out, recorder, tracker, first)
        finally:
            if tracker is not None:
                tracker.close()
        adapter = export_adapter(coord.models.skeleton(coord.spec), coord.global_arrays, out / "adapter",
                                 adapter_meta(cfg))  # the base weights are not needed to write an adapter
        extra = {"adapter": str(adapter), "seconds_total": round(time.monotonic() - start, 1)}
        if stop is not None:
            extra["stopped"] = asdict(stop)
        report = recorder.finish(extra)
    log(INFO, "fedtune: %s. Report: %s  Adapter: %s", "stopped" if stop else "done", report, adapter)
    return report


def _rounds(coord: Coordinator, cfg: RunConfig, out: Path, recorder: RunRecorder, tracker: Tracker | None,
            first: int) -> Stop | None:
    """Rounds ``first``..``rounds``: each checkpointed, then logged; the reason the run stopped early, if it did."""
    for rnd in range(first, cfg.federation.rounds + 1):
        t0 = time.monotonic()
        if rnd == 0:
            nodes: dict = {}
            record, stop = {"round": 0, **coord.evaluate(0, nodes), "nodes": nodes}, None
        else:
            record, stop = run_round(coord, rnd)
        if stop is not None:
            log(ERROR if stop.kind == "failure" else WARNING, "fedtune: run stopped at round %d: %s", rnd, stop.reason)
            return stop
        record["seconds"] = round(time.monotonic() - t0, 3)
        # The checkpoint first: a crash before the metrics line is appended is repaired on resume.
        save_checkpoint(out, Checkpoint(rnd, coord.global_arrays, coord.strategy.state_arrays(),
                                        [*recorder.records, record], cfg.to_flat(), recorder.meta))
        recorder.log_round(record)
        if tracker is not None:
            tracker.log(rnd, round_scalars(record))
        acc = record["eval_accuracy"]
        log(INFO, "[round %d/%d] global eval accuracy %s, loss %s, %.1fs", rnd, cfg.federation.rounds,
            "n/a" if acc is None else f"{100 * acc:.1f}%", record["eval_loss"], record["seconds"])
        stop = _requested_stop(out, rnd, cfg.federation.rounds)
        if stop is not None:
            log(WARNING, "fedtune: stopping after round %d as requested: %s", rnd, stop.reason)
            return stop
    return None


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flat(context.run_config)
    run_federation(grid, cfg, results_dir(cfg), int(context.run_id))
