"""A preset's ``[tune]`` table: the search space, the objective(s) and the pruner, validated once.

    [tune]
    objective = "eval_accuracy"           # or a list: ["eval_accuracy", "seconds"] (a Pareto front)
    pruner = "median"                     # median | threshold | none  (single objective only)
    prune-from-round = 1                  # the earliest round after which a trial may be pruned
    [tune.space]
    "train.lr" = { low = 0.002, high = 0.05, log = true }
    "train.local-steps" = { low = 2, high = 6 }
    "federation.strategy" = { choices = ["fedavg", "fedadam"] }

Every bound and choice is checked against the preset as a whole (``RunConfig.from_flat``), so a
value the run would refuse is refused here, before any trial starts, with the key named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from fedtune.common.config import ConfigError, RunConfig, config_key_type

# objective name -> Optuna direction. eval_*: the last round's held-out value; seconds: the trial's wall
# time; epsilon: the largest ε any node reported (its own ledger), meaningful when ε is searched.
OBJECTIVES = {
    "eval_accuracy": "maximize", "eval_macro_f1": "maximize", "eval_rouge_l": "maximize",
    "eval_loss": "minimize", "eval_perplexity": "minimize", "seconds": "minimize", "epsilon": "minimize",
}
PRUNERS = ("median", "threshold", "none")
_TABLE_KEYS = {"objective", "pruner", "prune-from-round", "prune-below", "prune-above", "startup-trials",
               "seed", "baseline-first", "space"}
_SPEC_KEYS = {"low", "high", "log", "step", "choices"}
_EPSILON_KEYS = ("privacy.target-epsilon", "privacy.noise-multiplier")


@dataclass(frozen=True)
class Param:
    """One searched key: a numeric range (``low``..``high``, optionally log-scaled or stepped) or choices."""

    key: str
    kind: type
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind is int:
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        return self.low <= value <= self.high  # type: ignore[operator]


@dataclass(frozen=True)
class TuneSpec:
    params: tuple[Param, ...]
    objectives: tuple[str, ...] = ("eval_accuracy",)
    pruner: str = "median"
    prune_from_round: int = 1
    prune_below: float | None = None
    prune_above: float | None = None
    startup_trials: int | None = None  # random trials before TPE models the space (default: a third)
    seed: int | None = None
    baseline_first: bool = True  # trial 0 runs the preset's own values, the configuration to beat

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


def _where(key: str) -> str:
    return f"[tune.space] \"{key}\""


def _number(key: str, field: str, value: Any, kind: type) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (kind is int and not float(value).is_integer()):
        raise ConfigError(f"{_where(key)}: {field} must be {'an integer' if kind is int else 'a number'} "
                          f"(the key is of type {kind.__name__}), got {value!r}")
    return int(value) if kind is int else float(value)


def _check_value(base: Mapping[str, Any], key: str, value: Any) -> None:
    """The run must accept ``value`` for ``key`` with the rest of the preset as it is."""
    try:
        RunConfig.from_flat({**base, key: value})
    except ConfigError as exc:
        raise ConfigError(f"{_where(key)}: the value {value!r} is not accepted by the run: {exc}") from None


def parse_param(key: str, spec: Any, base: Mapping[str, Any]) -> Param:
    if key.startswith("output."):
        raise ConfigError(f"{_where(key)}: output settings are chosen by `fedtune tune` (one folder per trial)")
    try:
        kind = config_key_type(key)
    except ConfigError as exc:
        raise ConfigError(f"{_where(key)}: {exc}") from None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{_where(key)} must be a table, e.g. {{ low = 0.001, high = 0.1, log = true }} or "
                          f"{{ choices = [...] }}; got {spec!r}")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ConfigError(f"{_where(key)}: unknown field(s) {sorted(unknown)}; use low/high (log, step) or choices")
    if "choices" in spec:
        return _choices_param(key, kind, spec, base)
    return _range_param(key, kind, spec, base)


def _choices_param(key: str, kind: type, spec: Mapping[str, Any], base: Mapping[str, Any]) -> Param:
    choices = spec["choices"]
    if set(spec) != {"choices"}:
        raise ConfigError(f"{_where(key)}: give either choices or low/high, not both")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{_where(key)}: choices must be a non-empty list, got {choices!r}")
    if len(set(map(repr, choices))) != len(choices):
        raise ConfigError(f"{_where(key)}: choices repeat a value: {choices!r}")
    for c in choices:
        _check_value(base, key, c)
    return Param(key, kind, choices=tuple(choices))


def _range_param(key: str, kind: type, spec: Mapping[str, Any], base: Mapping[str, Any]) -> Param:
    if kind not in (int, float):
        raise ConfigError(f"{_where(key)}: the key is of type {kind.__name__}; search it with choices = [...]")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{_where(key)}: a range needs both low and high")
    low, high = (_number(key, f, spec[f], kind) for f in ("low", "high"))
    if not low < high:
        raise ConfigError(f"{_where(key)}: empty range low={low!r} high={high!r}; low must be below high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{_where(key)}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{_where(key)}: a log-scaled range needs low > 0, got {low!r}")
    step = _number(key, "step", spec["step"], kind) if "step" in spec else None
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{_where(key)}: step must be > 0 and cannot be combined with log")
    for v in (low, high):
        _check_value(base, key, v)
    return Param(key, kind, low, high, log, step)


def _space_entries(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``"train.lr" = {...}`` or nested ``[tune.space.train] lr = {...}``: both give ``train.lr``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and not (set(v) & _SPEC_KEYS):
            out.update(_space_entries(v, key + "."))
        else:
            out[key] = v
    return out


def _objectives(value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"[tune] objective must be a metric name or a list of them, got {value!r}")
    for n in names:
        if n not in OBJECTIVES:
            raise ConfigError(f"[tune] objective {n!r} is unknown; choose from {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"[tune] objective lists a metric twice: {names!r}")
    return tuple(names)


def _int_field(table: Mapping[str, Any], name: str, default: int | None, minimum: int) -> int | None:
    v = table.get(name, default)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < minimum):
        raise ConfigError(f"[tune] {name} must be an integer >= {minimum}, got {v!r}")
    return v


def _threshold(table: Mapping[str, Any], name: str) -> float | None:
    v = table.get(name)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise ConfigError(f"[tune] {name} must be a number, got {v!r}")
    return None if v is None else float(v)


def parse_tune(table: Mapping[str, Any], base: Mapping[str, Any]) -> TuneSpec:
    """Validate a preset's ``[tune]`` table against the preset's resolved flat config ``base``."""
    unknown = set(table) - _TABLE_KEYS
    if unknown:
        raise ConfigError(f"[tune] has unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(_TABLE_KEYS))}")
    space = table.get("space")
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("the preset has no [tune.space] table: add the keys to search, e.g.\n"
                          "  [tune.space]\n  \"train.lr\" = { low = 0.002, high = 0.05, log = true }")
    params = tuple(parse_param(k, v, base) for k, v in _space_entries(space).items())
    objectives = _objectives(table.get("objective", "eval_accuracy"))
    pruner = table.get("pruner", "median")
    if pruner not in PRUNERS:
        raise ConfigError(f"[tune] pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    if len(objectives) > 1 and pruner != "none" and "pruner" in table:
        raise ConfigError("[tune] pruning needs a single objective (Optuna cannot prune a multi-objective study); "
                          "set pruner = \"none\" or give one objective")
    below, above = _threshold(table, "prune-below"), _threshold(table, "prune-above")
    if pruner == "threshold" and below is None and above is None:
        raise ConfigError("[tune] pruner = \"threshold\" needs prune-below and/or prune-above")
    if "epsilon" in objectives and not any(p.key in _EPSILON_KEYS for p in params):
        raise ConfigError("[tune] objective \"epsilon\" needs privacy.target-epsilon (or privacy.noise-multiplier) "
                          "in [tune.space]: otherwise every trial spends the same budget")
    baseline_first = table.get("baseline-first", True)
    if not isinstance(baseline_first, bool):
        raise ConfigError(f"[tune] baseline-first must be true or false, got {baseline_first!r}")
    return TuneSpec(params, objectives, "none" if len(objectives) > 1 else pruner,
                    _int_field(table, "prune-from-round", 1, 1), below, above,
                    _int_field(table, "startup-trials", None, 1), _int_field(table, "seed", None, 0), baseline_first)
