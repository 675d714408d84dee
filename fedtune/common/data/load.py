"""Where a run's records come from: a data file read with the run's format settings, or the
record pool a simulation splits across its nodes (the built-in synthetic triage notes or a file)."""

from __future__ import annotations

from pathlib import Path

from fedtune.common.config import DataConfig
from fedtune.common.data.records import Example, LoadedData, RecordSpec, load_examples
from fedtune.common.data.synthetic import DEPARTMENTS, INSTRUCTION, UNLISTED_INSTRUCTION, generate_triage

SYNTHETIC_TRIAGE = "synthetic-triage"  # data.source of the built-in demo records


def load_data_file(cfg: DataConfig, path: str | Path) -> LoadedData:
    """A data file read with the run's format settings; refused (DataError naming every bad record)
    if any record is bad - the same reader and message as ``fedtune data check``."""
    return load_examples(path, RecordSpec.from_config(cfg))


def triage_instruction(cfg: DataConfig) -> str:
    """The synthetic notes' system prompt under the run's ``data.instruction`` and ``data.list-labels``."""
    spec = RecordSpec.from_config(cfg)
    if spec.instruction_text:
        return spec.instruction_text
    return INSTRUCTION if spec.lists_labels(DEPARTMENTS) else UNLISTED_INSTRUCTION


def simulation_pool(cfg: DataConfig) -> tuple[list[Example], tuple[str, ...]]:
    """All records a simulation splits across its nodes, and their label set."""
    if cfg.source == SYNTHETIC_TRIAGE:
        return generate_triage(cfg.records, cfg.seed, triage_instruction(cfg)), DEPARTMENTS
    data = load_data_file(cfg, cfg.source)
    return data.examples, data.labels
