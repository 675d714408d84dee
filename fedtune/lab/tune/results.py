"""What a study leaves for a person: a progress line per trial, ``tune-report.md`` with the trials
table and plots (PNG), and ``best.toml``, a preset ready for ``fedtune simulate``.

Everything is rebuilt from the study's storage after every trial, so the files are current even
when the study is interrupted, and several workers of one study write the same complete picture.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from fedtune.common.files import atomic_write_bytes, atomic_write_text
from fedtune.coordinator.report import read_metrics
from fedtune.lab.simulation import preset_text
from fedtune.lab.tune.space import TuneSpec
from fedtune.lab.tune.trial import round_value

if TYPE_CHECKING:
    from fedtune.lab.tune.study import TuneJob

PRIVACY_NOTE = (
    "**Privacy.** Each trial's ε covers that trial's training only. Choosing the best of several trials "
    "by a metric computed on the same private records is itself a release of information about those "
    "records that no trial's ε accounts for (Papernot & Steinke 2022, *Hyperparameter tuning with Renyi "
    "differential privacy*). Tune on simulated or proxy data (as this study does: a simulation), then run "
    "the chosen preset once on the real federation. On a deployed federation every trial's training would "
    "be charged to each node's own ledger, and a node stops training when its budget is spent."
)


def _fmt(objective: str, value: float | None) -> str:
    if value is None:
        return "–"
    if objective in ("eval_accuracy", "eval_macro_f1", "eval_rouge_l"):
        return f"{100 * value:.1f}%"
    return f"{value:.0f} s" if objective == "seconds" else f"{value:.4g}"


def _value(v) -> str:
    """A sampled value as people read it: floats to 4 significant digits (TPE samples 0.050867221182929204)."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _params(trial: FrozenTrial) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in trial.params.items())


def trial_rounds(trial: FrozenTrial, objective: str) -> list[tuple[int, float | None]]:
    """(round, objective) for rounds 1.. of the trial, read from its own results folder."""
    out = trial.user_attrs.get("out")
    try:
        records = read_metrics(Path(out) / "metrics.jsonl") if out else []
    except (OSError, ValueError):
        records = []
    return [(r["round"], round_value(r, objective)) for r in records if r.get("round", 0) >= 1]


def _state(trial: FrozenTrial) -> str:
    return trial.state.name.lower()


def progress_line(trial: FrozenTrial, spec: TuneSpec) -> str:
    first = spec.objectives[0]
    rounds = " ".join(f"r{r} {_fmt(first, v)}" for r, v in trial_rounds(trial, first)) or "no rounds"
    values = "  ".join(f"{o} {_fmt(o, v)}" for o, v in zip(spec.objectives, trial.values or ()))
    why = f"  ({trial.user_attrs.get('error', '')[:200]})" if trial.state == TrialState.FAIL else ""
    secs = trial.user_attrs.get("seconds")
    took = f"{secs:.0f} s" if secs is not None else "? s"
    return f"trial {trial.number} {_state(trial)} {took} | {_params(trial)} | {rounds} | {values}{why}".rstrip(" |")


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (single objective) or the Pareto front; empty while no trial is complete."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]


def trials_table(trials: Sequence[FrozenTrial], spec: TuneSpec) -> list[str]:
    keys = [p.key for p in spec.params]
    head = ["trial", "state", *keys, *spec.objectives, "per round", "seconds", "folder"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in trials:
        values = list(t.values or [None] * len(spec.objectives))
        rounds = ", ".join(_fmt(spec.objectives[0], v) for _, v in trial_rounds(t, spec.objectives[0]))
        cells = [str(t.number) + (" (preset)" if t.user_attrs.get("baseline") else ""), _state(t),
                 *[_value(t.params.get(k, "")) for k in keys], *[_fmt(o, v) for o, v in zip(spec.objectives, values)],
                 rounds, str(t.user_attrs.get("seconds", "")), Path(t.user_attrs.get("out", "")).name]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _save_plot(draw, path: Path) -> Path | None:
    """Render one of Optuna's matplotlib plots to PNG; None when the study cannot draw it yet."""
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            ax = draw()
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None  # e.g. parameter importances need two complete trials that differ
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    try:
        fig.set_size_inches(7.0, 4.2)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    plots = folder / "plots"
    if len(study.directions) > 1:
        names = study.user_attrs.get("objectives", [])
        wanted = [("pareto-front.png", lambda: ovm.plot_pareto_front(study, target_names=names))]
    else:
        wanted = [("optimization-history.png", lambda: ovm.plot_optimization_history(study))]
    if len(complete) >= 2:
        wanted.append(("param-importances.png", lambda: ovm.plot_param_importances(study)))
    return [p for p in (_save_plot(draw, plots / name) for name, draw in wanted) if p is not None]


def best_preset(study: optuna.Study, job: "TuneJob") -> str | None:
    best = best_trials(study)
    if not best:
        return None
    t = best[0]  # multi-objective: the Pareto-optimal trial best in the first objective
    flat = {**{k: v for k, v in job.cfg.to_flat().items() if not k.startswith("output.")}, **t.params}
    values = ", ".join(f"{o} {_fmt(o, v)}" for o, v in zip(job.spec.objectives, t.values))
    return (f"# best.toml: trial {t.number} of study {job.name!r} ({values}), written by `fedtune tune`.\n"
            f"# Run it with: fedtune simulate {job.folder / 'best.toml'}\n"
            "# Chosen on a metric of the records it was tuned on: see the Privacy section of tune-report.md.\n"
            + preset_text(flat, job.info))


def render_report(study: optuna.Study, job: "TuneJob", plots: Sequence[Path]) -> str:
    from fedtune.lab.tune.study import redact

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    spec = job.spec
    lines = [f"# Tuning study `{job.name}`", "",
             f"Preset `{job.info.path or '(defaults)'}`, storage `{redact(job.storage)}`; objective "
             + ", ".join(f"{o} ({d})" for o, d in zip(spec.objectives, spec.directions))
             + f"; pruner {spec.pruner}; {len(trials)} trials (" + ", ".join(f"{n} {s}" for s, n in counts.items())
             + f") of the {job.trials} asked for.", ""]
    best, base = best_trials(study), [t for t in trials if t.user_attrs.get("baseline")]
    if best:
        lines += ["## Best" if len(best) == 1 else "## Pareto front", ""]
        lines += [f"- trial {t.number}: " + ", ".join(f"{o} {_fmt(o, v)}" for o, v in zip(spec.objectives, t.values))
                  + f" with {_params(t)}" for t in best]
        if base and base[0].values:
            lines += [f"- the preset's own values (trial {base[0].number}): "
                      + ", ".join(f"{o} {_fmt(o, v)}" for o, v in zip(spec.objectives, base[0].values))]
        lines += ["", "`best.toml` in this folder is the preset with the best trial's values.", ""]
    lines += ["## Trials", "", *trials_table(trials, spec), ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots] + ([""] if plots else [])
    lines += ["## Privacy", "", PRIVACY_NOTE, ""]
    return "\n".join(lines)


def write_results(study: optuna.Study, job: "TuneJob") -> None:
    plots = write_plots(study, job.folder)
    atomic_write_text(job.folder / "tune-report.md", render_report(study, job, plots))
    best = best_preset(study, job)
    if best is not None:
        atomic_write_text(job.folder / "best.toml", best)
