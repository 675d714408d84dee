"""Data formats both sides share: file formats -> examples, the built-in demo records, partitioning,
prompt encoding.  Reading a file decides nothing about privacy; which file a node reads is the
node's decision (``node/local_data.py``)."""

from fedtune.common.data.errors import DataError
from fedtune.common.data.load import SYNTHETIC_TRIAGE, load_data_file, simulation_pool
from fedtune.common.data.partition import partition, train_eval_split
from fedtune.common.data.prompts import Batch, Encoded, PromptEncoder
from fedtune.common.data.records import Example, LoadedData, Problem, RecordSpec, load_examples, load_jsonl, read_examples, write_jsonl
from fedtune.common.data.synthetic import DEPARTMENTS, generate_triage

__all__ = [
    "Batch", "DEPARTMENTS", "DataError", "Encoded", "Example", "LoadedData", "Problem", "PromptEncoder",
    "RecordSpec", "SYNTHETIC_TRIAGE", "generate_triage", "load_data_file", "load_examples", "load_jsonl", "partition",
    "read_examples", "simulation_pool", "train_eval_split", "write_jsonl",
]
