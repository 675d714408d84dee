"""Examples and the JSONL loaders that produce them.

An :class:`Example` is one private record as a conversation prefix (``messages``) and the
answer the model must learn (``completion``).  Loaders raise :class:`DataError` naming the
file and line of the first bad record, so an operator can fix the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


class DataError(ValueError):
    """The data file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    messages: tuple[dict[str, str], ...]  # the prompt as chat turns (system/user/assistant)
    completion: str  # the target answer
    label: str | None = None  # class label where the task has one (used for partitioning)


_ROLES = {"system", "user", "assistant"}


def _chat_example(obj: dict, where: str) -> Example:
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or len(msgs) < 2:
        raise DataError(f"{where}: 'messages' must be a list of at least 2 turns ending with the assistant's answer")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{i}] must be {{'role': system|user|assistant, 'content': str}}")
    if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
        raise DataError(f"{where}: the last message must be a non-empty assistant answer (the training target)")
    prompt = tuple({"role": m["role"], "content": m["content"]} for m in msgs[:-1])
    return Example(prompt, msgs[-1]["content"], _label(obj, where))


def _prompt_completion_example(obj: dict, where: str) -> Example:
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: 'prompt' must be a non-empty string")
    if not isinstance(completion, str) or not completion.strip():
        raise DataError(f"{where}: 'completion' must be a non-empty string")
    return Example(({"role": "user", "content": prompt},), completion, _label(obj, where))


def _label(obj: dict, where: str) -> str | None:
    label = obj.get("label")
    if label is None:
        return None
    if not isinstance(label, (str, int)):
        raise DataError(f"{where}: 'label' must be a string or integer")
    return str(label)


def parse_record(obj: object, where: str) -> Example:
    """One decoded JSON object -> Example (chat ``messages`` or ``prompt``/``completion``)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        return _chat_example(obj, where)
    if "prompt" in obj or "completion" in obj:
        return _prompt_completion_example(obj, where)
    raise DataError(f"{where}: record has neither 'messages' nor 'prompt'/'completion' fields")


def load_jsonl(path: str | Path) -> list[Example]:
    """Read a JSONL file of chat or prompt/completion records; blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    examples = []
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{p}: line {lineno}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: bad JSON ({exc.msg} at column {exc.colno})") from exc
            examples.append(parse_record(obj, where))
    if not examples:
        raise DataError(f"{p} contains no records")
    return examples


def to_jsonl_record(ex: Example) -> dict:
    record: dict = {"messages": list(ex.messages) + [{"role": "assistant", "content": ex.completion}]}
    if ex.label is not None:
        record["label"] = ex.label
    return record


def write_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(to_jsonl_record(ex)) + "\n")
