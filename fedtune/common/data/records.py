"""Raw rows -> :class:`Example`, for every supported record format.

An :class:`Example` is one private record as a conversation prefix (``messages``) and the
answer the model must learn (``completion``).  Formats (field names configurable, see
:class:`RecordSpec`):

* ``chat``: ``{"messages": [{"role", "content"}, ..., {"role": "assistant", ...}]}``
* ``instruction``: ``{"instruction", "input" (optional), "output"}``
* ``prompt-completion``: ``{"prompt", "completion"}``
* ``classification``: ``text`` + ``label`` columns, turned into an instruction that lists the
  allowed labels (``data.list-labels``: only while the list is short; a long one would crowd out
  the text, so the model learns text -> label instead); the label is the answer.

Reading never stops at the first bad record: every problem is collected with its line/row,
so ``fedtune data check`` can list them all and a node can refuse the file naming all of them.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from fedtune.common.config import DATA_FORMATS, DataConfig
from fedtune.common.data.errors import DataError
from fedtune.common.data.sources import read_rows

MAX_LISTED = 25  # problems shown in one error message (all are counted)
MAX_LISTED_LABEL_CHARS = 400  # data.list-labels = auto lists labels up to this long a list (about 100 tokens)


@dataclass(frozen=True)
class Example:
    messages: tuple[dict[str, str], ...]  # the prompt as chat turns (system/user/assistant)
    completion: str  # the target answer
    label: str | None = None  # class label where the task has one (partitioning, macro-F1)
    group: str | None = None  # natural group (e.g. hospital id) for partition = "group"


@dataclass(frozen=True)
class RecordSpec:
    """How to read records: the format and the names of its fields (from ``[data]``)."""

    format: str = "auto"
    text: str = "text"
    label: str = "label"
    messages: str = "messages"
    prompt: str = "prompt"
    completion: str = "completion"
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    group: str = ""
    labels: tuple[str, ...] = ()  # allowed labels; empty = those found in the file
    instruction_text: str = ""  # classification prompt; empty = default listing the labels
    split: str = "train"
    list_labels: str = "auto"  # classification: list the labels in the prompt (auto: while the list is short)

    @classmethod
    def from_config(cls, cfg: DataConfig) -> "RecordSpec":
        return cls(cfg.format, cfg.text_column, cfg.label_column, cfg.messages_field, cfg.prompt_field,
                   cfg.completion_field, cfg.instruction_field, cfg.input_field, cfg.output_field, cfg.group_column,
                   cfg.label_list, cfg.instruction, cfg.split, cfg.list_labels)

    def guess_format(self, obj: Mapping[str, Any]) -> str | None:
        if self.messages in obj:
            return "chat"
        if self.instruction in obj and self.output in obj:
            return "instruction"
        if self.prompt in obj and self.completion in obj:
            return "prompt-completion"
        if self.text in obj and self.label in obj:
            return "classification"
        return None

    def lists_labels(self, labels: Iterable[str]) -> bool:
        """Whether the prompt lists the labels; decided from the label set alone, so every node prompts alike."""
        if self.list_labels == "auto":
            return len(", ".join(labels)) <= MAX_LISTED_LABEL_CHARS
        return self.list_labels == "yes"

    def classification_prompt(self, labels: Iterable[str]) -> str:
        labels = tuple(labels)
        if self.instruction_text:
            return self.instruction_text
        if self.lists_labels(labels):
            return "Classify the text. Reply with exactly one of: " + ", ".join(labels) + "."
        return "Classify the text. Reply with its label."


VALUE = "{value}"  # where a record's own value stands in a problem message


@dataclass(frozen=True)
class Problem:
    where: str  # "line 7" / "row 7"
    message: str  # names lines and fields only; a record's own value is ``value``, at ``VALUE``
    severity: str = "error"  # "error": the record is unusable; "warning": usable, but look at it
    value: str | None = None  # shown to the operator (``fedtune data check``), withheld from anything sent

    def __str__(self) -> str:
        return self.render(show_value=True)

    def render(self, show_value: bool) -> str:
        shown = f"'{self.value}'" if show_value else "(value withheld)"
        return f"{self.where}: {self.message.replace(VALUE, shown)}"

    @property
    def position(self) -> int:
        """The line/row number, for listing problems in file order."""
        return int(self.where.split()[-1])


@dataclass
class LoadedData:
    path: Path
    format: str
    examples: list[Example]
    positions: list[str]  # where each example came from
    labels: tuple[str, ...]  # allowed labels (classification) or labels seen; empty if none
    rows: int  # rows read, good and bad
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def error_message(self, show_values: bool = True) -> str:
        errs = self.errors
        lines = [f"{self.path}: {len(errs)} bad record(s) of {self.rows}; fix them (`fedtune data check {self.path}` "
                 "lists everything):"]
        lines += [f"  {p.render(show_values)}" for p in errs[:MAX_LISTED]]
        if len(errs) > MAX_LISTED:
            lines.append(f"  ... and {len(errs) - MAX_LISTED} more")
        return "\n".join(lines)


class _Bad(Exception):
    """One record's problem: (message, the record's own value or None); the caller knows where."""

    def problem(self, where: str) -> Problem:
        return Problem(where, self.args[0], value=self.args[1] if len(self.args) > 1 else None)


def _text(obj: Mapping[str, Any], key: str, what: str = "") -> str:
    if key not in obj or obj[key] is None:
        raise _Bad(f"missing field '{key}'{what}")
    value = obj[key]
    if not isinstance(value, str):
        raise _Bad(f"field '{key}' must be text, got {type(value).__name__}")
    if not value.strip():
        raise _Bad(f"empty text in field '{key}'")
    return value


def _optional_label(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad(f"field '{key}' (label) must be text or an integer, got {type(value).__name__}")
    return str(value).strip()


_ROLES = {"system", "user", "assistant"}


def _chat(obj: Mapping[str, Any], spec: RecordSpec) -> tuple[tuple[dict, ...], str]:
    msgs = obj.get(spec.messages)
    if msgs is None:
        raise _Bad(f"missing field '{spec.messages}'")
    if not isinstance(msgs, list) or len(msgs) < 2:
        raise _Bad(f"'{spec.messages}' must be a list of at least 2 turns ending with the assistant's answer")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in _ROLES \
                or not isinstance(m.get("content"), str):
            raise _Bad(f"{spec.messages}[{i}] must be {{'role': system|user|assistant, 'content': text}}")
    if msgs[-1]["role"] != "assistant":
        raise _Bad(f"the last turn of '{spec.messages}' must be the assistant's answer (the training target)")
    if not msgs[-1]["content"].strip():
        raise _Bad(f"empty text in the assistant's answer ({spec.messages}[{len(msgs) - 1}])")
    for i, m in enumerate(msgs[:-1]):  # a blank prompt turn would teach the answer with nothing to answer
        if not m["content"].strip():
            raise _Bad(f"empty text in the {m['role']} turn ({spec.messages}[{i}]): every turn before the answer "
                       "must carry text; remove the turn or fill it in")
    return tuple({"role": m["role"], "content": m["content"]} for m in msgs[:-1]), msgs[-1]["content"]


def to_example(obj: Mapping[str, Any], fmt: str, spec: RecordSpec, labels: tuple[str, ...]) -> Example:
    """One decoded row -> Example; raises ``_Bad`` with what is wrong."""
    label = _optional_label(obj, spec.label)
    if fmt == "chat":
        messages, completion = _chat(obj, spec)
    elif fmt == "instruction":
        instruction, completion = _text(obj, spec.instruction), _text(obj, spec.output)
        context = obj.get(spec.input)
        if context is not None and not isinstance(context, str):
            raise _Bad(f"field '{spec.input}' must be text, got {type(context).__name__}")
        user = instruction + (f"\n\n{context}" if context and context.strip() else "")
        messages = ({"role": "user", "content": user},)
    elif fmt == "prompt-completion":
        messages = ({"role": "user", "content": _text(obj, spec.prompt)},)
        completion = _text(obj, spec.completion)
    elif fmt == "classification":
        text = _text(obj, spec.text)
        if label is None:
            raise _Bad(f"missing field '{spec.label}' (the label)")
        messages = ({"role": "system", "content": spec.classification_prompt(labels)}, {"role": "user", "content": text})
        completion = label
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if label is not None and labels and label not in labels:
        raise _Bad(f"unknown label {VALUE} (allowed: {', '.join(labels)}); fix the record or data.labels", label)
    group = None
    if spec.group:
        group = _optional_label(obj, spec.group)
        if group is None:
            raise _Bad(f"missing field '{spec.group}' (the group column)")
    return Example(messages, completion, label, group)


def read_examples(path: str | Path, spec: RecordSpec = RecordSpec()) -> LoadedData:
    """Read every record, collecting problems; raises DataError only for file-level problems."""
    p = Path(path).expanduser()
    rows, problems, good = 0, [], []
    for row in read_rows(p, spec.split):
        rows += 1
        if row.value is None:
            problems.append(Problem(row.where, str(row.problem)))
        else:
            good.append(row)
    if rows == 0:
        raise DataError(f"{p} contains no records")
    fmt = spec.format
    if fmt == "auto":  # each record's own format (mixed files are fine); unrecognisable ones get the majority's
        guesses = [spec.guess_format(r.value) for r in good]
        if good and not any(guesses):
            raise DataError(
                f"{p}: cannot tell the record format from the fields {sorted(good[0].value)}. Expected one of: "
                f"'{spec.messages}' (chat), '{spec.instruction}'+'{spec.output}' (instruction), "
                f"'{spec.prompt}'+'{spec.completion}' (prompt-completion), '{spec.text}'+'{spec.label}' "
                f"(classification). Set data.format / --format and the field names (e.g. --text-column)")
        fmt = Counter(g for g in guesses if g).most_common(1)[0][0] if good else "chat"
        formats = [g or fmt for g in guesses]
    else:
        formats = [fmt] * len(good)
    if fmt not in DATA_FORMATS:
        raise DataError(f"unknown format {fmt!r}; use one of {', '.join(DATA_FORMATS)}")
    labels = spec.labels
    if not labels:  # the labels present in the file, in a stable order
        found = set()
        for r in good:
            try:
                found.add(_optional_label(r.value, spec.label))
            except _Bad:
                pass
        labels = tuple(sorted(x for x in found if x is not None))
    examples, positions = [], []
    for r, f in zip(good, formats):
        try:
            examples.append(to_example(r.value, f, spec, labels if f == "classification" or spec.labels else ()))
            positions.append(r.where)
        except _Bad as exc:
            problems.append(exc.problem(r.where))
    problems += _duplicates(examples, positions)
    problems.sort(key=lambda q: q.position)
    return LoadedData(p, fmt, examples, positions, labels, rows, problems)


def _duplicates(examples: list[Example], positions: list[str]) -> list[Problem]:
    first: dict[str, str] = {}
    out = []
    for ex, where in zip(examples, positions):
        key = hashlib.sha256(json.dumps([ex.messages, ex.completion], sort_keys=True).encode()).hexdigest()
        if key in first:
            out.append(Problem(where, f"duplicate of {first[key]} (same prompt and answer)", "warning"))
        else:
            first[key] = where
    return out


def load_examples(path: str | Path, spec: RecordSpec = RecordSpec()) -> LoadedData:
    """Read a data file and refuse it (DataError listing every bad record) if any record is bad."""
    data = read_examples(path, spec)
    if data.errors:
        raise DataError(data.error_message(), public=data.error_message(show_values=False))
    if not data.examples:
        raise DataError(f"{data.path} contains no usable records")
    return data


def load_jsonl(path: str | Path) -> list[Example]:
    """Chat or prompt/completion JSONL (format guessed) -> examples; refuses files with bad records."""
    return load_examples(path).examples


def to_jsonl_record(ex: Example) -> dict:
    record: dict = {"messages": list(ex.messages) + [{"role": "assistant", "content": ex.completion}]}
    if ex.label is not None:
        record["label"] = ex.label
    return record


def write_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(to_jsonl_record(ex)) + "\n")
