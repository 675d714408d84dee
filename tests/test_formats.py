"""Every supported data format and container, good and bad files, `fedtune data check`, and the
node refusing a bad file with the same lines."""

import csv
import json
from collections import Counter

import pytest

from fedtune.cli import main
from fedtune.common.config import DataConfig
from fedtune.common.data import DataError, PromptEncoder, RecordSpec, load_examples, partition, read_examples
from fedtune.common.data.check import check_file
from fedtune.node.local_data import node_examples

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                     {"role": "assistant", "content": "Paris"}]}


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _csv(path, header, rows):
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_chat_jsonl_with_a_custom_field_and_label(tmp_path):
    rows = [{"conversation": CHAT["messages"], "topic": "geo"}, {"conversation": CHAT["messages"][1:], "topic": 7}]
    data = load_examples(_jsonl(tmp_path / "c.jsonl", rows), RecordSpec(messages="conversation", label="topic"))
    assert data.format == "chat" and len(data.examples) == 2
    ex = data.examples[0]
    assert ex.messages == tuple(CHAT["messages"][:2]) and ex.completion == "Paris" and ex.label == "geo"
    assert data.examples[1].label == "7" and data.labels == ("7", "geo")


def test_instruction_jsonl_with_optional_input_and_renamed_fields(tmp_path):
    rows = [{"task": "Translate to French.", "context": "cat", "answer": "chat"},
            {"task": "Name a colour.", "answer": "blue"}]
    spec = RecordSpec(instruction="task", input="context", output="answer")
    a, b = load_examples(_jsonl(tmp_path / "i.jsonl", rows), spec).examples
    assert a.messages == ({"role": "user", "content": "Translate to French.\n\ncat"},) and a.completion == "chat"
    assert b.messages == ({"role": "user", "content": "Name a colour."},)


def test_prompt_completion_jsonl(tmp_path):
    data = load_examples(_jsonl(tmp_path / "p.jsonl", [{"q": "2+2?", "a": "4"}]),
                         RecordSpec(format="prompt-completion", prompt="q", completion="a"))
    assert data.examples[0].messages == ({"role": "user", "content": "2+2?"},) and data.examples[0].completion == "4"


def test_classification_csv_with_user_named_columns_becomes_an_instruction(tmp_path):
    path = _csv(tmp_path / "t.csv", ["id", "message", "category"],
                [[1, "My card was stolen", "fraud"], [2, "Raise my limit,\nplease", "cards"], [3, "Loan rates?", "loans"]])
    data = load_examples(path, RecordSpec(text="message", label="category"))
    assert data.format == "classification" and data.labels == ("cards", "fraud", "loans")
    ex = data.examples[1]
    assert ex.messages[0] == {"role": "system",
                              "content": "Classify the text. Reply with exactly one of: cards, fraud, loans."}
    assert ex.messages[1] == {"role": "user", "content": "Raise my limit,\nplease"}  # quoted newline kept
    assert ex.completion == ex.label == "cards"
    assert data.positions == ["line 2", "line 3", "line 5"]  # physical lines: record 2 spans lines 3-4


def test_classification_jsonl_with_allowed_labels_and_custom_instruction(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "stolen card", "label": "fraud"}])
    spec = RecordSpec(labels=("fraud", "cards"), instruction_text="Route this message.")
    ex = load_examples(path, spec).examples[0]
    assert ex.messages[0]["content"] == "Route this message." and ex.completion == "fraud"


def test_parquet_and_datasets_folder(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    rows = {"text": ["stolen card", "loan rates", ""], "label": ["fraud", "loans", "fraud"]}
    pq.write_table(pa.table(rows), tmp_path / "t.parquet")
    data = read_examples(tmp_path / "t.parquet")
    assert [e.completion for e in data.examples] == ["fraud", "loans"]
    assert [str(p) for p in data.errors] == ["row 3: empty text in field 'text'"]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "test": datasets.Dataset.from_dict(
        {"text": ["hi"], "label": ["loans"]})})
    dd.save_to_disk(str(tmp_path / "ds"))
    assert len(read_examples(tmp_path / "ds").examples) == 2
    assert len(read_examples(tmp_path / "ds", RecordSpec(split="test")).examples) == 1
    with pytest.raises(DataError, match=r"has splits \['test', 'train'\], not 'dev'"):
        read_examples(tmp_path / "ds", RecordSpec(split="dev"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not a Hugging Face datasets folder"):
        read_examples(tmp_path / "plain")


@pytest.mark.parametrize("name, content, expected", [
    ("x.txt", "hello", "unsupported file type '.txt'"),
    ("x.jsonl", "", "contains no records"),
    ("x.jsonl", '{"foo": 1}\n', "cannot tell the record format from the fields \\['foo'\\]"),
    ("x.parquet", "not parquet", "not a readable Parquet file"),
])
def test_file_level_problems_are_clear(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=expected):
        read_examples(tmp_path / name)


def test_bad_csv_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'text,label\nfine,a\n,a\ntoo,many,cells\nshort\ncaf\xe9,a\nok,b\n')
    data = read_examples(path)
    assert [str(p) for p in data.errors] == [
        "line 3: empty text in field 'text'", "line 4: 3 cells but the header has 2 columns",
        "line 5: missing field 'label' (the label)",
        "line 6: not valid UTF-8 (invalid continuation byte at byte 3); save the file as UTF-8",
    ]
    assert len(data.examples) == 2


def _five_defects(tmp_path):
    path = tmp_path / "tickets.jsonl"
    lines = [json.dumps({"text": "card stolen yesterday", "category": "fraud"}),
             '{"text": "raise my limit", "category": "cards"',  # bad JSON
             json.dumps({"category": "loans"}),  # missing field
             json.dumps({"text": "  ", "category": "loans"}),  # empty text
             json.dumps({"text": "I want a mortgage", "category": "mortgages"}),  # unknown label
             ]
    body = "\n".join(lines).encode() + b'\n{"text": "caf\xe9 bill", "category": "cards"}\n'  # non-UTF-8
    body += (json.dumps({"text": "word " * 300, "category": "loans"}) + "\n").encode()  # over-long (warning)
    body += (lines[0] + "\n").encode()  # duplicate (warning)
    path.write_bytes(body)
    return path


EXPECTED = [
    "line 2: bad JSON (Expecting ',' delimiter at character 47)",
    "line 3: missing field 'text'",
    "line 4: empty text in field 'text'",
    "line 5: unknown label 'mortgages' (allowed: fraud, cards, loans); fix the record or data.labels",
    "line 6: not valid UTF-8 (invalid continuation byte at byte 13); save the file as UTF-8",
]


def test_data_check_reports_five_defects_with_line_numbers_and_fails(tmp_path, capsys, tiny_model_dir):
    path = _five_defects(tmp_path)
    rc = main(["data", "check", str(path), "--label-column", "category", "--labels", "fraud,cards,loans",
               "--config", str(_preset(tmp_path, tiny_model_dir))])
    out = capsys.readouterr().out
    assert rc == 1
    for line in EXPECTED:
        assert f"  {line}\n" in out
    assert "line 7: " in out and "the prompt will lose its first" in out and "cuts the instruction" in out
    assert "raise model.max-length to at least" in out and "or set data.list-labels=no" in out
    assert "line 8: duplicate of line 1" in out and "[warning]" in out
    assert "records:  8 read, 3 usable, 6 with errors, 1 warnings" in out
    assert "labels:   2: fraud 2 (67%), loans 1 (33%)" in out
    assert "NOT OK" in out


def test_data_check_refuses_chat_records_with_an_empty_user_or_system_turn_by_line(tmp_path, capsys, tiny_model_dir):
    """A record whose prompt turn is blank teaches the model an answer to nothing: `data check` must list it with
    its line and not say OK (it did before: only an empty assistant answer was refused)."""
    def turns(*pairs):
        return {"messages": [{"role": r, "content": c} for r, c in pairs]}
    path = _jsonl(tmp_path / "chat.jsonl", [CHAT, turns(("user", "   "), ("assistant", "Paris")), CHAT,
                                            turns(("system", ""), ("user", "Capital of Peru?"), ("assistant", "Lima"))])
    rc = main(["data", "check", str(path), "--config", str(_preset(tmp_path, tiny_model_dir))])
    out = capsys.readouterr().out
    assert rc == 1 and "NOT OK" in out and "records:  4 read, 2 usable, 2 with errors" in out
    assert "  line 2: empty text in the user turn (messages[0])" in out
    assert "  line 4: empty text in the system turn (messages[0])" in out


def _preset(tmp_path, model_dir):
    p = tmp_path / "preset.toml"
    p.write_text(f'[model]\nname = "{model_dir}"\nmax-length = 128\n')
    return p


def test_node_start_refuses_the_same_file_with_the_same_lines(tmp_path):
    path = _five_defects(tmp_path)
    cfg = DataConfig(label_column="category", labels="fraud,cards,loans")
    with pytest.raises(DataError) as err:
        node_examples(cfg, {"data-path": str(path), "name": "bank-a"})
    msg = str(err.value)
    assert msg.startswith(f"{path}: 5 bad record(s) of 8")
    assert msg.splitlines()[1:] == [f"  {line}" for line in EXPECTED]


def test_deployed_classification_node_needs_the_run_label_list(tmp_path):
    path = _csv(tmp_path / "t.csv", ["text", "label"], [["a", "x"], ["b", "y"], ["c", "x"]])
    with pytest.raises(DataError, match="needs data.labels in the run config"):
        node_examples(DataConfig(), {"data-path": str(path)})
    assert node_examples(DataConfig(labels="x,y"), {"data-path": str(path)}).labels == ("x", "y")


def test_over_long_records_say_what_truncation_does(tmp_path, smol_tokenizer):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "word " * 100, "completion": "yes"},
                                         {"prompt": "hi", "completion": "word " * 100}, {"prompt": "hi", "completion": "ok"}])
    enc = PromptEncoder(smol_tokenizer, 64)
    report = check_file(path, RecordSpec(), enc)
    problems = {p.where: p for p in report.data.problems}
    assert "the prompt will lose its first" in problems["line 1"].message
    assert "the answer will be cut to 63 of its" in problems["line 2"].message
    # a prompt-completion prompt starts with its instruction: cutting it is an error, with the fix
    assert all(problems[w].severity == "error" and "raise model.max-length to at least" in problems[w].message
               for w in ("line 1", "line 2"))
    assert "line 3" not in problems and not report.ok and report.cut == 2
    # ... and the encoder does exactly that
    first = enc.encode(report.data.examples[0])
    assert first.truncated and len(first.prompt_ids) + len(first.target_ids) == 64
    assert len(enc.encode(report.data.examples[1]).target_ids) == 63


def test_group_partition_keeps_groups_whole_and_balances_records(tmp_path):
    rows = [[f"note {i}", "x" if i % 3 else "y", f"site-{g}"] for i, g in
            enumerate([0] * 40 + [1] * 25 + [2] * 20 + [3] * 10 + [4] * 5)]
    path = _csv(tmp_path / "g.csv", ["text", "label", "hospital"], rows)
    examples = load_examples(path, RecordSpec(group="hospital")).examples
    parts = partition(examples, 3, "group", alpha=1.0, seed=0)
    assert parts == partition(examples, 3, "group", alpha=9.0, seed=5)  # deterministic, seed-free
    assert sorted(i for p in parts for i in p) == list(range(100))
    groups = [{examples[i].group for i in p} for p in parts]
    assert sum(len(g) for g in groups) == 5  # no group split across nodes
    assert sorted(len(p) for p in parts) == [30, 30, 40]  # largest-first greedy: {0}, {1,4}, {2,3}
    with pytest.raises(ValueError, match="5 groups cannot fill 6 nodes"):
        partition(examples, 6, "group", 1.0, 0)
    no_group = load_examples(path).examples
    with pytest.raises(ValueError, match="needs every record to have a group"):
        partition(no_group, 3, "group", 1.0, 0)
    assert Counter(e.group for e in examples)["site-0"] == 40


@pytest.mark.parametrize("fmt, record, expected", [
    ("chat", {"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]},
     "the last turn of 'messages' must be the assistant's answer (the training target)"),
    ("chat", {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]},
     "empty text in the assistant's answer (messages[1])"),
    ("chat", {"messages": [{"role": "user", "content": "\n "}, {"role": "assistant", "content": "y"}]},
     "empty text in the user turn (messages[0]): every turn before the answer must carry text; remove the turn or "
     "fill it in"),
    ("chat", {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "x"},
                           {"role": "assistant", "content": "y"}]},
     "empty text in the system turn (messages[0]): every turn before the answer must carry text; remove the turn or "
     "fill it in"),
    ("instruction", {"instruction": " ", "input": "context", "output": "x"}, "empty text in field 'instruction'"),
    ("prompt-completion", {"prompt": "\t", "completion": "x"}, "empty text in field 'prompt'"),
    ("classification", {"text": "", "label": "b"}, "empty text in field 'text'"),
    ("chat", {"messages": "hello"}, "'messages' must be a list of at least 2 turns ending with the assistant's answer"),
    ("chat", {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
     "messages[0] must be {'role': system|user|assistant, 'content': text}"),
    ("instruction", {"instruction": "Translate."}, "missing field 'output'"),
    ("instruction", {"instruction": "Translate.", "input": 5, "output": "x"}, "field 'input' must be text, got int"),
    ("prompt-completion", {"prompt": "x"}, "missing field 'completion'"),
    ("classification", {"text": "x", "label": ["a"]}, "field 'label' (label) must be text or an integer, got list"),
    ("classification", {"text": "x"}, "missing field 'label' (the label)"),
])
def test_bad_records_of_each_format_are_named_with_their_line(tmp_path, fmt, record, expected):
    good = {"chat": CHAT, "instruction": {"instruction": "a", "output": "b"},
            "prompt-completion": {"prompt": "a", "completion": "b"}, "classification": {"text": "a", "label": "b"}}[fmt]
    data = read_examples(_jsonl(tmp_path / "x.jsonl", [good, record]), RecordSpec(format=fmt))
    assert [str(p) for p in data.errors] == [f"line 2: {expected}"] and len(data.examples) == 1
    with pytest.raises(DataError, match="1 bad record"):
        load_examples(tmp_path / "x.jsonl", RecordSpec(format=fmt))


def test_many_labels_that_crowd_out_the_text_are_an_error_that_names_the_fix(tmp_path, smol_tokenizer):
    """77 intents listed in the prompt take most of model.max-length: data check must not say OK, and must
    name the settings that fix it; with the labels not listed the same file fits and is OK."""
    labels = [f"intent_number_{i}_of_the_bank" for i in range(77)]
    path = _csv(tmp_path / "intents.csv", ["text", "label"],
                [[f"customer message {i} about something", labels[i % 77]] for i in range(154)])
    enc = PromptEncoder(smol_tokenizer, 256)
    listed = check_file(path, RecordSpec(format="classification", list_labels="yes"), enc)
    assert not listed.ok and listed.cut == 154
    text = listed.render(RecordSpec(format="classification"))
    assert "NOT OK" in text and "or set data.list-labels=no" in text and "raise model.max-length to at least" in text
    auto = check_file(path, RecordSpec(format="classification"), enc)  # auto: a 2,000-character list is not listed
    assert auto.ok and auto.cut == 0 and max(auto.lengths) < 64
    assert "Reply with its label." in auto.data.examples[0].messages[0]["content"]
    short = check_file(path, RecordSpec(format="classification", labels=tuple(labels[:5])), enc)
    assert "exactly one of: intent_number_0_of_the_bank" in short.data.examples[0].messages[0]["content"] or not short.ok
