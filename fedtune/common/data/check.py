"""``fedtune data check``: what a data file holds and everything wrong with it, line by line.

The same reader (``records.read_examples``) is what a node runs when it starts, so a file that
passes here is a file the node accepts; errors here are exactly the node's refusal message.
Token lengths are measured with the run's model tokenizer and prompt template, so "over-long"
and what truncation will do are the real ones.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedtune.common.data.prompts import PromptEncoder
from fedtune.common.data.records import Example, LoadedData, Problem, RecordSpec, read_examples

MAX_WARNINGS = 20


@dataclass
class CheckReport:
    data: LoadedData
    max_length: int | None = None
    lengths: list[int] = field(default_factory=list)  # prompt + answer tokens per usable record
    cut: int = 0  # records whose instruction truncation would cut (errors)
    fix: str = ""  # the setting that stops it

    @property
    def ok(self) -> bool:
        return not self.data.errors

    def render(self, spec: RecordSpec) -> str:
        d = self.data
        errors, warnings = d.errors, [p for p in d.problems if p.severity != "error"]
        fields = {"chat": f"messages field '{spec.messages}'",
                  "instruction": f"fields '{spec.instruction}', '{spec.input}', '{spec.output}'",
                  "prompt-completion": f"fields '{spec.prompt}', '{spec.completion}'",
                  "classification": f"text column '{spec.text}', label column '{spec.label}'"}[d.format]
        bad_rows = len({p.where for p in errors})
        out = [f"file:     {d.path}", f"format:   {d.format} ({fields})",
               f"records:  {d.rows} read, {len(d.examples)} usable, {bad_rows} with errors, {len(warnings)} warnings"]
        labels = Counter(e.label for e in d.examples if e.label is not None)
        if labels:
            total = sum(labels.values())
            out.append(f"labels:   {len(labels)}: " + ", ".join(
                f"{k} {v} ({v / total:.0%})" for k, v in sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))))
        groups = Counter(e.group for e in d.examples if e.group is not None)
        if groups:
            out.append(f"groups:   {len(groups)}: " + ", ".join(f"{k} {v}" for k, v in sorted(groups.items())))
        if self.lengths:
            a = np.array(self.lengths)
            over = int((a > self.max_length).sum()) if self.max_length else 0
            out.append(f"tokens:   prompt + answer per record: min {a.min()}, median {int(np.median(a))}, "
                       f"p95 {int(np.percentile(a, 95))}, max {a.max()}; {over} over model.max-length {self.max_length}")
        dups = sum(1 for p in warnings if p.message.startswith("duplicate"))
        out.append(f"duplicates: {dups}")
        if d.problems:  # every error; warnings (usable records) up to MAX_WARNINGS
            shown = errors + warnings[:MAX_WARNINGS]
            out += ["", "problems:"] + [f"  {p}" + ("" if p.severity == "error" else "  [warning]")
                                        for p in sorted(shown, key=lambda q: q.position)]
            if len(warnings) > MAX_WARNINGS:
                out.append(f"  ... and {len(warnings) - MAX_WARNINGS} more warnings")
        if self.cut:
            out += ["", f"{self.cut} record(s) would be trained and scored with the start of their prompt (the "
                    f"instruction) cut off at model.max-length {self.max_length}: {self.fix}."]
        refused = len(errors) > self.cut
        out += ["", "OK: a node will accept this file." if self.ok else
                f"NOT OK: {len(errors)} error(s); " + ("a node refuses this file until they are fixed." if refused
                                                       else "fix them before a node trains on this file.")]
        return "\n".join(out)


def truncation_problem(encoder: PromptEncoder, prompt_len: int, target_len: int) -> str | None:
    """What ``PromptEncoder.encode`` will do to a record of these lengths, or None if it fits."""
    limit = encoder.max_length
    if prompt_len + target_len <= limit:
        return None
    head = f"{prompt_len + target_len} tokens > model.max-length {limit}: "
    if target_len >= limit:
        return head + f"the answer will be cut to {limit - 1} of its {target_len} tokens and the prompt to its last token"
    return head + f"the prompt will lose its first {prompt_len + target_len - limit} of {prompt_len} tokens"


def cuts_instruction(fmt: str, ex: Example) -> bool:
    """Left truncation removes the start of the prompt: there sits the instruction (and a classification
    task's label list) for every format but a chat without a system turn (which loses its oldest turns)."""
    return fmt != "chat" or ex.messages[0]["role"] == "system"


def truncation_fix(spec: RecordSpec, data: LoadedData, longest: int) -> str:
    """The settings that stop the instruction from being cut."""
    fix = f"raise model.max-length to at least {longest}"
    if data.format == "classification" and not spec.instruction_text and spec.lists_labels(data.labels):
        fix += " or set data.list-labels=no (the label list is then learnt, not read, and evaluation scores every label)"
    return fix


def check_file(path: str | Path, spec: RecordSpec, encoder: PromptEncoder | None = None) -> CheckReport:
    data = read_examples(path, spec)
    report = CheckReport(data, encoder.max_length if encoder else None)
    if encoder is None:
        return report
    cut: list[tuple[str, str]] = []
    for ex, where in zip(data.examples, data.positions):
        prompt_len = len(encoder.encode_prompt(ex.messages))
        target_len = len(encoder.tok(ex.completion, add_special_tokens=False)["input_ids"]) + 1
        report.lengths.append(prompt_len + target_len)
        problem = truncation_problem(encoder, prompt_len, target_len)
        if problem and cuts_instruction(data.format, ex):
            cut.append((where, problem + ", which cuts the instruction at its start"))
        elif problem:
            data.problems.append(Problem(where, problem, "warning"))
    report.cut, report.fix = len(cut), truncation_fix(spec, data, max(report.lengths, default=0))
    data.problems.extend(Problem(where, f"{problem}: {report.fix}") for where, problem in cut)
    data.problems.sort(key=lambda q: q.position)
    return report
