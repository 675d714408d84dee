"""Data: file formats -> examples, the built-in demo records, partitioning, prompt encoding."""

from .partition import partition, train_eval_split
from .prompts import Batch, Encoded, PromptEncoder
from .records import DataError, Example, load_jsonl, write_jsonl
from .synthetic import DEPARTMENTS, generate_triage

__all__ = [
    "Batch", "DEPARTMENTS", "DataError", "Encoded", "Example", "PromptEncoder",
    "generate_triage", "load_jsonl", "partition", "train_eval_split", "write_jsonl",
]
