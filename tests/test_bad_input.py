"""Bad input at the command line: each gets a message that says what is wrong, exit code 2, and
nothing is written - no results folder, no changed file (Flower is never started)."""

from __future__ import annotations

import json

import pytest

from fedtune.cli import main as cli_main
from fedtune.coordinator.checkpoint import checkpoint_path, save_checkpoint

from snapshots import folder_state
from test_checkpoint import make_checkpoint


@pytest.fixture
def workspace(tmp_path, tiny_model_dir):
    (tmp_path / "held").mkdir()
    save_checkpoint(tmp_path / "held", make_checkpoint(1))  # a results folder that already holds a run
    (tmp_path / "a-file").write_text("x")
    save_checkpoint(tmp_path / "damaged", make_checkpoint(1))
    data = checkpoint_path(tmp_path / "damaged").read_bytes()
    checkpoint_path(tmp_path / "damaged").write_bytes(data[:-100])  # e.g. a copy that did not finish
    (tmp_path / "preset.toml").write_text(f"[model]\nname = {json.dumps(str(tiny_model_dir))}\n")
    return tmp_path


MODEL = "model.name={tiny}"
CASES = [
    (["--set", "federation.rounds=\"three\""], "federation.rounds must be of type int"),
    (["--set", "privacy.delta=-1"], "privacy.delta must be >= 0"),
    (["--set", "lora.dropout=1.5"], "lora.dropout must be in [0, 1)"),
    (["--set", "federation.rond=3"], "did you mean 'federation.rounds'"),
    (["--set", "output.resume=true"], "output.resume needs output.dir"),
    (["--set", 'model.name="/nonexistent/model"'], "model folder not found: /nonexistent/model"),
    (["--set", MODEL, "--set", 'data.source="/nonexistent/notes.jsonl"'], "data file not found: /nonexistent/notes.jsonl"),
    (["--set", MODEL, "--out", "{tmp}/held"], "already holds a run"),
    (["--set", MODEL, "--out", "{tmp}/a-file"], "is not a folder"),
    (["--resume", "{tmp}/nowhere"], "does not exist"),
    (["--resume", "{tmp}/held"], "has no preset.toml"),
    (["{tmp}/preset.toml", "--resume", "{tmp}/damaged"], "damaged or truncated"),
    (["--resume", "{tmp}/held", "--out", "{tmp}/other"], "--resume continues the run in its own folder"),
    (["nonexistent-preset.toml"], "preset file not found"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[c[1][:40] for c in CASES])
def test_bad_input_is_explained_and_leaves_no_trace(workspace, tiny_model_dir, capsys, args, message):
    args = [a.format(tmp=workspace, tiny=json.dumps(str(tiny_model_dir))) for a in args]
    before = folder_state(workspace)
    assert cli_main(["simulate", "--quiet", "--out", str(workspace / "new"), *args]
                    if "--out" not in args and "--resume" not in args else ["simulate", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("fedtune: error: ")
    assert folder_state(workspace) == before  # nothing created, nothing touched
