"""Data: file formats -> examples, the built-in demo records, partitioning, prompt encoding."""

from .errors import DataError
from .partition import partition, train_eval_split
from .prompts import Batch, Encoded, PromptEncoder
from .records import Example, LoadedData, Problem, RecordSpec, load_examples, load_jsonl, read_examples, write_jsonl
from .synthetic import DEPARTMENTS, generate_triage

__all__ = [
    "Batch", "DEPARTMENTS", "DataError", "Encoded", "Example", "LoadedData", "Problem", "PromptEncoder",
    "RecordSpec", "generate_triage", "load_examples", "load_jsonl", "partition", "read_examples",
    "train_eval_split", "write_jsonl",
]
