"""Typed run configuration, validated once at the edge.

Flower hands the apps a *flat* ``run_config`` (``{"train.lr": 0.002, ...}``); presets are
nested TOML tables that flatten to the same dotted keys.  Every key, its type, default,
constraint and help text is declared exactly once, in the dataclasses below; the
``[tool.flwr.app.config]`` table in ``pyproject.toml`` is checked against them by a test.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

Scalar = bool | int | float | str


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which and how to fix it."""


@dataclass(frozen=True)
class Rule:
    """A key's constraint: ``text`` says what is allowed (the error message and the configuration
    reference both print it); calling it returns the problem, or None when ``value`` is fine."""

    text: str
    test: Callable[[Any], bool]

    def __call__(self, value: Any) -> str | None:
        return None if self.test(value) else f"must be {self.text}"


def _opt(default: Scalar, help: str, check: Rule | None = None):
    return field(default=default, metadata={"help": help, "check": check})


_positive = Rule("> 0", lambda v: v > 0)
_non_negative = Rule(">= 0", lambda v: v >= 0)
_fraction = Rule("in (0, 1]", lambda v: 0 < v <= 1)
_open_fraction = Rule("in (0, 1)", lambda v: 0 < v < 1)
_below_one = Rule("in [0, 1)", lambda v: 0 <= v < 1)
_below_half = Rule("in [0, 0.5)", lambda v: 0 <= v < 0.5)
_non_empty = Rule("non-empty", lambda v: bool(str(v).strip()))


def _one_of(*choices: str) -> Rule:
    return Rule(f"one of {', '.join(repr(c) if c == '' else c for c in choices)}", lambda v: v in choices)


DEVICES = ("auto", "cpu", "cuda")  # model.device, and a node config's own `device`


@dataclass(frozen=True)
class ModelConfig:
    name: str = _opt(
        "smollm2-135m-instruct",
        "base model: 'smollm2-135m-instruct' (packaged, offline), a local HF folder or .gguf file, or a hub id",
        _non_empty,
    )
    precision: str = _opt(
        "auto", "compute precision of forward/backward (LoRA weights, AdamW and DP clipping stay fp32); auto = bf16 "
        "where it is clearly faster: a CUDA GPU that supports bf16, or a CPU on which a 256x256 bf16 matmul probe "
        "runs in under 0.8x the fp32 time (AVX512-BF16/AMX: ~1.5x faster), else fp32 - on other CPUs bf16 is "
        "emulated and can be 100x slower", _one_of("auto", "bf16", "fp32")
    )
    max_length: int = _opt(256, "max tokens per record (prompt is truncated from the left)", _positive)
    device: str = _opt("auto", "where the model runs: auto = the GPU where torch sees one (CUDA), else the CPU; cuda "
                       "on a machine without one is refused. A deployed node's own `device` overrides it",
                       _one_of(*DEVICES))
    quantization: str = _opt(
        "none", "base weights: none (fp32) or 4bit (QLoRA: NF4 base via bitsandbytes, LoRA and DP-SGD in fp32; needs "
        "a CUDA GPU and bitsandbytes: pip install 'fedtune[gpu]')", _one_of("none", "4bit"))
    gradient_checkpointing: bool = _opt(
        False, "recompute each adapted layer's activations in the backward pass instead of keeping them: less "
        "memory for long records, large batches or large models, for one more forward of the adapted layers per "
        "backward pass (ghost clipping makes two); exact, DP-SGD included (Opacus sees each layer's activations "
        "once per backward, in the recomputation)")


@dataclass(frozen=True)
class LoraConfigSection:
    r: int = _opt(4, "LoRA rank", _positive)
    alpha: float = _opt(16.0, "LoRA alpha (scaling = alpha / r)", _positive)
    dropout: float = _opt(0.0, "LoRA dropout", _below_one)
    target_modules: str = _opt(
        "q_proj,v_proj",
        "comma-separated module names that get LoRA (Llama-style names; all projections: "
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)",
        _non_empty,
    )
    top_layers: int = _opt(
        0, "LoRA only on the last N transformer layers (0 = every layer): fewer values to noise and send, and "
        "the backward pass stops at the lowest adapted layer", _non_negative)
    freeze_a: bool = _opt(
        False, "FFA-LoRA (Sun et al., ICLR'24): keep every LoRA A at its shared seeded start and train only B, so "
        "averaging the B deltas is exactly averaging the adapters' B·A, and DP noise and uploads cover half the values")

    @property
    def modules(self) -> list[str]:
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]


DATA_FORMATS = ("chat", "instruction", "prompt-completion", "classification")


@dataclass(frozen=True)
class DataConfig:
    source: str = _opt(
        "synthetic-triage",
        "'synthetic-triage' (built-in demo records) or a data file to split across simulated nodes "
        "(.jsonl, .csv, .parquet, or a Hugging Face datasets folder saved with save_to_disk)",
        _non_empty,
    )
    format: str = _opt("auto", "record format; auto = guessed from the fields of the first record",
                       _one_of("auto", *DATA_FORMATS))
    text_column: str = _opt("text", "classification: the column holding the text to classify", _non_empty)
    label_column: str = _opt("label", "the column holding the class label (classification; optional otherwise)",
                             _non_empty)
    labels: str = _opt(
        "", "classification: comma-separated allowed labels (the prompt lists them; others are errors). Empty = the "
        "labels found in a simulation's data; deployed nodes need it set so every node prompts alike")
    instruction: str = _opt(
        "", "classification and the synthetic triage notes: the instruction before the text; empty = 'Classify the "
        "text. Reply with exactly one of: <labels>.' (or, when the labels are not listed, 'Classify the text. Reply "
        "with its label.')")
    list_labels: str = _opt(
        "auto", "classification and the synthetic triage notes: list the allowed labels in the prompt? auto = only "
        "while that list is at most "
        "400 characters (about 100 tokens); 'no' trains text -> label (evaluation scores every label anyway)",
        _one_of("auto", "yes", "no"))
    messages_field: str = _opt("messages", "chat: the field holding the list of {role, content} turns", _non_empty)
    prompt_field: str = _opt("prompt", "prompt-completion: the prompt field", _non_empty)
    completion_field: str = _opt("completion", "prompt-completion: the completion field", _non_empty)
    instruction_field: str = _opt("instruction", "instruction: the instruction field", _non_empty)
    input_field: str = _opt("input", "instruction: the optional input/context field", _non_empty)
    output_field: str = _opt("output", "instruction: the answer field", _non_empty)
    group_column: str = _opt("", "optional column naming each record's natural group (e.g. hospital id); "
                             "needed by partition = 'group'")
    split: str = _opt("train", "Hugging Face datasets folder holding several splits: the split to use", _non_empty)
    records: int = _opt(1600, "number of synthetic records generated in total (all nodes)", _positive)
    eval_fraction: float = _opt(0.1, "fraction of each node's records held out for evaluation", _open_fraction)
    eval_file: str = _opt(
        "", "optional central evaluation file the coordinator holds (same format settings); the global adapter "
        "is scored on it every round")
    partition: str = _opt("label-skew", "how simulation splits records across nodes",
                          _one_of("label-skew", "iid", "quantity-skew", "group"))
    alpha: float = _opt(0.5, "Dirichlet concentration of the label or quantity skew (smaller = more skewed)", _positive)
    seed: int = _opt(0, "seed of data generation and partitioning")
    canaries: str = _opt(
        "", "privacy audit only (`fedtune privacy audit` writes it): a JSONL file of canary records added to the "
        "training records of the simulated node data.canary-node; a deployed node (data-path) never reads it")
    canary_node: int = _opt(0, "privacy audit: the partition id of the simulated node that trains on data.canaries",
                            _non_negative)

    @property
    def label_list(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.labels.split(",") if x.strip())


@dataclass(frozen=True)
class TrainConfig:
    local_steps: int = _opt(3, "optimiser steps per node per round", _positive)
    batch_size: int = _opt(32, "records per step (under DP: the expected size of a Poisson batch)", _positive)
    lr: float = _opt(0.01, "AdamW learning rate on the node", _positive)
    weight_decay: float = _opt(0.0, "AdamW weight decay", _non_negative)
    objective: str = _opt(
        "tokens", "per-sample training loss: 'tokens' = mean cross-entropy of the answer's tokens (any task); "
        "'labels' = cross-entropy of the record's label against every allowed label, each scored by its "
        "likelihood (labelled tasks; what label-scored evaluation ranks); auto = labels where every training "
        "answer is a label", _one_of("auto", "tokens", "labels"))
    eval_batch_size: int = _opt(32, "records per evaluation forward pass", _positive)
    eval_max_new_tokens: int = _opt(
        64, "evaluation of free-text answers: most tokens generated per answer (stops earlier at end-of-turn)",
        _positive)
    eval_method: str = _opt(
        "auto", "how held-out answers are predicted: 'labels' = the allowed label with the highest likelihood "
        "(one pass per batch scores every label, always a valid label), 'generate' = greedy generation; auto = labels "
        "where the task has a label set", _one_of("auto", "labels", "generate"))
    lr_schedule: str = _opt(
        "constant", "node learning rate across rounds: constant, or cosine decay from train.lr over the planned "
        "rounds (after any warm-up)", _one_of("constant", "cosine"))
    warmup_rounds: int = _opt(0, "rounds over which the node learning rate ramps up linearly to train.lr",
                              _non_negative)
    proximal_mu: float = _opt(
        0.0, "FedProx μ: after each local step the adapter is pulled toward the round's global adapter by "
        "lr·μ·(w − w_global) (decoupled, like AdamW's weight decay; data-independent, so DP is unaffected)",
        _non_negative)
    carry_optimizer_state: bool = _opt(
        False, "keep each node's AdamW moments from one of its rounds to its next (in the node's Flower "
        "Context.state, never sent; computed from DP-SGD's noised updates only, so no cost in ε) instead of a "
        "fresh AdamW every round, whose first step is lr·sign(g): mostly noise under DP")
    seed: int = _opt(0, "seed of adapter initialisation and batch sampling")


@dataclass(frozen=True)
class FederationConfig:
    rounds: int = _opt(3, "number of federated rounds", _positive)
    min_nodes: int = _opt(2, "minimum nodes that must be connected (and reply) for a round", _positive)
    fraction_train: float = _opt(1.0, "fraction of connected nodes sampled to train each round", _fraction)
    fraction_evaluate: float = _opt(
        1.0, "fraction of connected nodes sampled to evaluate the global adapter each round, each on its own "
        "held-out records (the coordinator's data.eval-file, if set, is scored every round)", _fraction)
    evaluate_all_last: bool = _opt(True, "the last planned round is evaluated on every connected node, whatever "
                                         "fraction-evaluate says")
    strategy: str = _opt(
        "fedavg", "server optimiser over the averaged delta: fedavg (with server-momentum > 0: FedAvgM), fedavgm, "
        "or the adaptive fedadam / fedyogi / fedadagrad of Reddi et al. (2021)",
        _one_of("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"))
    server_lr: float = _opt(
        1.0, "server step size η applied to the averaged delta (1.0 = FedAvg; the adaptive strategies move each "
        "value by about η per round, so use e.g. 0.01 with them)", _positive)
    server_momentum: float = _opt(
        0.0, "fedavg/fedavgm: server momentum on the averaged delta (0 = FedAvg, e.g. 0.9 = FedAvgM)",
        _below_one)
    server_beta1: float = _opt(0.9, "fedadam/fedyogi/fedadagrad: β1 of the first-moment average",
                               _below_one)
    server_beta2: float = _opt(0.99, "fedadam/fedyogi: β2 of the second-moment average", _open_fraction)
    server_tau: float = _opt(1e-3, "fedadam/fedyogi/fedadagrad: τ, the adaptivity floor added to sqrt(v)",
                             _positive)
    round_retries: int = _opt(
        2, "times a round with fewer than min-nodes usable updates (node errors, timeouts, aborted secure "
        "aggregation, a rejected aggregate) is retried before the run stops at its last checkpoint", _non_negative)
    round_timeout: float = _opt(1800.0, "seconds to wait for node replies in a round", _positive)
    node_wait_timeout: float = _opt(120.0, "seconds to wait for min-nodes to connect", _positive)


@dataclass(frozen=True)
class PrivacyConfig:
    enabled: bool = _opt(True, "record-level DP-SGD (Opacus) on every node; false only for comparison")
    target_epsilon: float = _opt(
        8.0, "ε each node's ledger may reach by the run's last planned round, capped by the node's own max-epsilon; "
        "σ is paced from what is left over the rounds still planned (used when noise-multiplier = 0)", _non_negative
    )
    noise_multiplier: float = _opt(0.0, "σ of DP-SGD; 0 = derive it from target-epsilon", _non_negative)
    max_grad_norm: float = _opt(1.0, "per-sample gradient clipping bound C", _positive)
    delta: float = _opt(0.0, "δ a run asks for; 0 = the node's own (max-delta, or 0.1 / its number of privacy "
                        "units: records, or groups with unit = group). A node never uses a larger δ than its own, "
                        "and refuses one >= 1 / its units", _non_negative)
    unit: str = _opt("record", "what ε protects: one record, or one group of records (data.group-column: a patient, "
                     "a customer) - DP-SGD then samples and clips per group", _one_of("record", "group"))
    accountant: str = _opt("prv", "accountant of simulated nodes: prv (Opacus PRV, Gopi et al. 2021: tight) or rdp "
                           "(Rényi DP: looser, about 10% more noise at the same ε)", _one_of("rdp", "prv"))
    clipping: str = _opt("hooks", "Opacus per-sample gradient mode: hooks (fastest for LoRA; any precision, "
                         "record or group units) or ghost (record-level only, with model.precision=fp32)",
                         _one_of("hooks", "ghost"))
    simulated_max_epsilon: float = _opt(
        8.0, "budget of *simulated* nodes only; a deployed node's budget is its own node config 'max-epsilon'", _positive
    )
    state_dir: str = _opt(
        "", "simulation only: where simulated nodes keep ledgers; empty = <output.dir>/node-state "
        "(or <cache>/simulated-node-state/run-<id> when output.dir is empty too)"
    )


@dataclass(frozen=True)
class SecAggConfig:
    enabled: bool = _opt(True, "SecAgg+ secure aggregation of the deltas every round; false only for comparison")
    clip: float = _opt(
        0.0, "L2 bound each node clips its delta to before masking; 0 = auto: 2 × lr × local-steps × "
        "sqrt(adapter parameters), above any AdamW delta of one round", _non_negative)
    dropout: float = _opt(
        0.35, "fraction of each node's neighbours that may drop out during the protocol (sets the threshold)",
        _below_half)
    stage_timeout: float = _opt(300.0, "seconds to wait for node replies in each key-exchange stage", _positive)
    max_weight: float = _opt(
        10000.0, "cap on a node's aggregation weight (its training records), announced before masking; sets the "
        "fixed-point scale, so no node's self-report can", _positive)


@dataclass(frozen=True)
class OutputConfig:
    dir: str = _opt("", "results folder; a relative path is taken from the ServerApp's working directory (give an "
                    "absolute one to be sure); empty = runs/<timestamp> under the current directory")
    resume: bool = _opt(False, "continue the run checkpointed in output.dir from its last completed round")
    tracking: str = _opt("", "also send per-round metrics to an experiment tracker: 'tensorboard' (writes "
                         "<output.dir>/tensorboard; pip install 'fedtune[tracking]'), or empty for none",
                         _one_of("", "tensorboard"))


@dataclass(frozen=True)
class RunConfig:
    """The whole run configuration, one section per concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfigSection = field(default_factory=LoraConfigSection)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    # -- flat <-> typed -------------------------------------------------------------
    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> "RunConfig":
        """Build from dotted keys (Flower run_config); unknown keys and bad values raise ConfigError."""
        known = _known_keys()
        sections: dict[str, dict[str, Any]] = {s.name: {} for s in dataclasses.fields(cls)}
        for key, value in flat.items():
            _check_known(key, known)
            section, fname = known[key]
            sections[section][fname] = _coerce(key, value, _field_type(section, fname))
        built = {}
        for s in dataclasses.fields(cls):
            sub = s.default_factory()  # type: ignore[misc]
            built[s.name] = dataclasses.replace(sub, **sections[s.name])
        cfg = cls(**built)
        cfg.validate()
        return cfg

    def to_flat(self) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {}
        for s in dataclasses.fields(self):
            sub = getattr(self, s.name)
            for f in dataclasses.fields(sub):
                out[f"{s.name}.{f.name.replace('_', '-')}"] = getattr(sub, f.name)
        return out

    def validate(self) -> None:
        for s in dataclasses.fields(self):
            sub = getattr(self, s.name)
            for f in dataclasses.fields(sub):
                check = f.metadata.get("check")
                value = getattr(sub, f.name)
                problem = check(value) if check else None
                if problem:
                    key = f"{s.name}.{f.name.replace('_', '-')}"
                    raise ConfigError(
                        f"{key} {problem} (got {value!r}). {f.metadata['help']}. "
                        f"Fix it in the preset or with --set {key}=VALUE"
                    )
        if self.secagg.enabled and self.federation.min_nodes < 2:
            raise ConfigError(
                "secagg.enabled needs federation.min-nodes >= 2: the secure sum of one node's update is that "
                "update. Raise federation.min-nodes or set secagg.enabled=false"
            )
        if self.output.resume and not self.output.dir:
            raise ConfigError("output.resume needs output.dir: the results folder whose checkpoint.safetensors to continue")
        if self.data.partition == "group" and not self.data.group_column:
            raise ConfigError("data.partition = 'group' needs data.group-column: the column naming each record's group")
        if self.federation.strategy == "fedavgm" and self.federation.server_momentum == 0:
            raise ConfigError("federation.strategy = 'fedavgm' needs federation.server-momentum > 0 (e.g. 0.9)")
        if self.train.warmup_rounds >= self.federation.rounds and self.train.warmup_rounds:
            raise ConfigError(f"train.warmup-rounds={self.train.warmup_rounds} leaves no round at the full learning "
                              f"rate of a {self.federation.rounds}-round run; use fewer warm-up rounds")
        if not self.lora.modules:
            raise ConfigError("lora.target-modules lists no module names; e.g. 'q_proj,v_proj'")
        p = self.privacy
        if p.enabled and p.noise_multiplier == 0 and p.target_epsilon == 0:
            raise ConfigError("privacy: set privacy.target-epsilon > 0 or privacy.noise-multiplier > 0 (or privacy.enabled=false)")
        if p.enabled and p.unit == "group" and not self.data.group_column:
            raise ConfigError("privacy.unit = 'group' needs data.group-column: the column naming each record's "
                              "patient or customer")
        if p.enabled and p.unit == "group" and p.clipping == "ghost":
            raise ConfigError("privacy.unit = 'group' clips per group from per-record gradients: use "
                              "privacy.clipping=hooks")
        if p.enabled and p.clipping == "ghost" and self.model.precision != "fp32":
            raise ConfigError(
                "privacy.clipping=ghost computes per-sample gradient norms in the compute precision, and bf16 norms "
                "can exceed the clipping bound (breaking the DP guarantee). Use model.precision=fp32 with ghost, "
                "or privacy.clipping=hooks (fp32 clipping at any precision). model.precision=auto may pick bf16"
            )


def _field_type(section: str, fname: str) -> type:
    return type(getattr(getattr(RunConfig(), section), fname))


def _known_keys() -> dict[str, tuple[str, str]]:
    """Dotted key -> (section, dataclass field name)."""
    out = {}
    for key in RunConfig().to_flat():
        section, name = key.split(".", 1)
        out[key] = (section, name.replace("-", "_"))
    return out


def _check_known(key: str, known: Mapping[str, Any]) -> None:
    if key not in known:
        hint = difflib.get_close_matches(key, known, n=1)
        raise ConfigError(
            f"unknown config key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
            + f". Known keys: {', '.join(sorted(known))}"
        )


def config_key_type(key: str) -> type:
    """The declared type of a dotted run-config key (ConfigError, with a suggestion, if there is none)."""
    known = _known_keys()
    _check_known(key, known)
    return _field_type(*known[key])


def _coerce(key: str, value: Any, typ: type) -> Scalar:
    """Accept the value if it fits the declared type; ints are fine where floats are expected."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be of type {typ.__name__}, got {value!r} ({type(value).__name__})")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables -> dotted keys, the way Flower flattens [tool.flwr.app.config]."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse one ``--set key=value``; the value is read as TOML, bare words as strings."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = (p.strip() for p in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


PATH_KEYS = ("data.source", "data.eval-file", "model.name")


def _absolute_paths(flat: dict[str, Any], base: Path) -> None:
    """Make relative file paths absolute: the Flower apps run in other working directories.
    ``model.name`` only when such a local path exists (otherwise it is a hub id or a packaged name)."""
    for key in PATH_KEYS:
        value = flat.get(key)
        if not isinstance(value, str) or not value or value == "synthetic-triage" or Path(value).is_absolute():
            continue
        if "\0" in value:
            raise ConfigError(f"{key} = {value!r} contains a NUL character: it cannot be a file path or model name")
        candidate = (base / value).expanduser()
        if key != "model.name" or candidate.exists():
            flat[key] = str(candidate.resolve())


SIMULATION_KEYS: dict[str, tuple[Any, str]] = {  # a preset's [simulation] table: key -> (default, what it does)
    "nodes": (4, "how many nodes to simulate (positive integer)"),
    "cpus-per-node": (None, "CPU cores per simulated node (Ray's num-cpus); unset = every core, one node at a time"),
    "gpus-per-node": (0.0, "share of one GPU per simulated node in [0, 1] (Ray's num-gpus: 0.25 = 4 nodes per GPU)"),
    "ray-address": ("", "an existing Ray cluster's head as host:port (what `ray start --head` printed) or 'auto'; "
                        "empty = a local Ray per run; needs cpus-per-node"),
}


@dataclass(frozen=True)
class Preset:
    """A simulation preset: run-config values plus how many nodes to simulate."""

    values: dict[str, Any]
    num_nodes: int
    cpus_per_node: int | None = None  # CPU cores per simulated node (None = all cores, one node at a time)
    gpus_per_node: float = 0.0  # share of a GPU per simulated node (Ray's num-gpus: 0.25 = 4 nodes per GPU)
    ray_address: str = ""  # an existing Ray cluster's address (host:port, or "auto"); empty = a local Ray per run
    path: Path | None = None
    tune: dict[str, Any] = field(default_factory=dict)  # the [tune] table, read by `fedtune tune` only


def load_preset(path: str | Path | None, overrides: list[str] | None = None) -> tuple[RunConfig, Preset]:
    """Read a preset TOML (``[simulation]`` nodes/cpus-per-node + config tables), apply ``--set``, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"preset file not found: {p}. Presets live in simulations/, e.g. simulations/quickstart.toml")
        try:
            tree = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p} is not valid TOML: {exc}") from exc
    sim = dict(tree.pop("simulation", {}))
    tune = tree.pop("tune", {})
    flat = flatten(tree)
    if path is not None:  # a preset's relative data paths are relative to the preset file
        _absolute_paths(flat, Path(path).resolve().parent)
    for item in overrides or []:
        key, value = parse_assignment(item)
        if key.startswith("simulation."):
            sim[key.split(".", 1)[1]] = value
        else:
            flat[key] = value
    _absolute_paths(flat, Path.cwd())  # --set paths: relative to where the command runs
    nodes, cpus, gpus, ray_address = (sim.pop(k, SIMULATION_KEYS[k][0]) for k in SIMULATION_KEYS)
    if sim:
        raise ConfigError(f"unknown [simulation] keys {sorted(sim)}; supported: {', '.join(SIMULATION_KEYS)}")
    if not isinstance(ray_address, str) or (ray_address and ray_address != "auto" and ":" not in ray_address):
        raise ConfigError(f"simulation.ray-address must be a running Ray cluster's head as host:port (what `ray start "
                          f"--head` printed, e.g. 10.0.0.5:6379) or 'auto', got {ray_address!r}")
    if ray_address and cpus is None:
        raise ConfigError("simulation.ray-address needs simulation.cpus-per-node: the default (every core of this "
                          "machine per node) may not fit on any machine of the cluster")
    if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not 0 <= gpus <= 1:
        raise ConfigError(f"simulation.gpus-per-node must be a share of one GPU in [0, 1] (0.5 = two nodes per GPU, "
                          f"0 = CPU only), got {gpus!r}")
    for key, value in (("nodes", nodes), ("cpus-per-node", cpus)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"simulation.{key} must be a positive integer, got {value!r}")
    cfg = RunConfig.from_flat(flat)
    if cfg.federation.min_nodes > nodes:
        raise ConfigError(
            f"federation.min-nodes={cfg.federation.min_nodes} exceeds simulation.nodes={nodes}: "
            "no round could ever start. Lower min-nodes or simulate more nodes"
        )
    return cfg, Preset(values=flat, num_nodes=nodes, cpus_per_node=cpus, gpus_per_node=float(gpus),
                       ray_address=ray_address, path=Path(path) if path else None, tune=tune)
