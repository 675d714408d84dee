"""fedtune export / verify: what leaves the federation is what it produced, loads without fedtune,
and says truthfully what privacy it has (each node's ledger, not the run's targets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedtune.cli import main as cli_main
from fedtune.common.config import RunConfig
from fedtune.coordinator.server_app import run_federation
from fedtune.node.privacy import PrivacyLedger
from fedtune.release.export import export_run
from fedtune.release.manifest import verify
from fedtune.release.run_files import ReleaseError

from conftest import tiny_run_config
from loopback import LoopbackGrid
from snapshots import folder_state


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """A 2-round federation of 3 tiny-model nodes with DP and SecAgg+, and its export (merged, fp32)."""
    root = tmp_path_factory.mktemp("release")
    cfg = RunConfig.from_flat(tiny_run_config(tiny_model_dir, root / "ledgers", **{
        "train.lr": 0.05, "data.records": 240, "federation.rounds": 2, "output.dir": str(root / "run")}))
    run_federation(LoopbackGrid(3, cfg.to_flat()), cfg, root / "run", run_id=7)
    assert cli_main(["export", str(root / "run"), "--out", str(root / "export"), "--merged", "--dtype", "fp32"]) == 0
    return root


def test_the_merged_model_gives_the_logits_of_base_plus_adapter(finished_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 42, 7, 99, 3, 250, 11]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(finished_run / "export" / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(finished_run / "export" / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        expected, got = with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)(input_ids=ids).logits
    assert not torch.allclose(expected, plain, atol=1e-4)  # the adapter changes something: the check can fail
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_merged_folder_loads_with_transformers_alone_in_a_process_that_never_imports_fedtune(finished_run):
    folder = finished_run / "export" / "merged"
    code = (f"import sys; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}); t = AutoTokenizer.from_pretrained({str(folder)!r})\n"
            "out = m.generate(**t('Chest pain', return_tensors='pt'), max_new_tokens=3, do_sample=False)\n"
            "assert not [k for k in sys.modules if k.split('.')[0] == 'fedtune'], 'fedtune was imported'\n"
            "print(out.shape[1])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 0


def test_the_cards_epsilon_per_node_is_what_each_nodes_ledger_holds(finished_run):
    card = (finished_run / "export" / "adapter" / "README.md").read_text()
    header = card.split("---")[1]
    assert "library_name: peft" in header and "base_model:" in header and "differential-privacy" in header
    rows = {line.split("|")[1].strip(): line for line in card.splitlines() if line.startswith("| hospital-")}
    ledgers = sorted((finished_run / "ledgers").glob("*/privacy-ledger-*.json"))
    assert len(ledgers) == len(rows) == 3
    for path in ledgers:
        ledger = PrivacyLedger.load(path)
        assert f"| {ledger.epsilon():.3f} | {ledger.delta:.2e} | record | PRV |" in rows[path.parent.name]
    assert "What ε does not cover" in card and "Who had to be honest" in card
    merged_card = (finished_run / "export" / "merged" / "README.md").read_text()
    assert "library_name: transformers" in merged_card


def test_verify_passes_on_the_export_and_names_the_file_after_a_one_byte_change(finished_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished_run / "export", copy)
    assert verify(copy) == [] and cli_main(["verify", str(copy)]) == 0
    weights = copy / "merged" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 1
    weights.write_bytes(bytes(blob))
    assert verify(copy) == ["merged/model.safetensors: changed (SHA-256 differs from the manifest)"]
    capsys.readouterr()
    assert cli_main(["verify", str(copy)]) == 1
    assert "FAILED merged/model.safetensors: changed" in capsys.readouterr().out
    (copy / "run" / "metrics.jsonl").unlink()
    (copy / "adapter" / "extra.bin").write_bytes(b"x")
    assert "run/metrics.jsonl: missing" in verify(copy) and "adapter/extra.bin: not in the manifest (added after the export)" in verify(copy)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_run_with_a_missing_or_damaged_adapter_is_refused_and_nothing_is_written(finished_run, tmp_path, damage, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    weights = run / "adapter" / "adapter_model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = folder_state(tmp_path)
    with pytest.raises(ReleaseError, match="adapter_model.safetensors|damaged"):
        export_run(run, tmp_path / "out", merged=True)
    assert cli_main(["export", str(run), "--out", str(tmp_path / "out")]) == 2
    assert "adapter" in capsys.readouterr().err
    assert folder_state(tmp_path) == before and not (tmp_path / "out").exists()


def test_generate_answers_from_a_merged_folder_as_from_base_plus_adapter(finished_run, capsys):
    answers = []
    for folder in ("merged", "adapter"):
        assert cli_main(["generate", "--adapter", str(finished_run / "export" / folder), "Chest pain",
                         "--max-new-tokens", "6"]) == 0
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1]


def _key_pair(folder: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private, public = folder / f"{folder.name}.key", folder / f"{folder.name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.mark.adversarial
def test_a_signed_export_detects_a_file_swapped_with_its_manifest_rewritten(finished_run, tmp_path, capsys):
    """Someone between the coordinator and a node replaces the merged weights and rewrites the manifest
    to match: the hashes then agree, so only the coordinator's signature can tell."""
    from fedtune.release.manifest import MANIFEST, check_signature, manifest_text

    (tmp_path / "coordinator").mkdir()
    (tmp_path / "attacker").mkdir()
    key, pub = _key_pair(tmp_path / "coordinator")
    _, other_pub = _key_pair(tmp_path / "attacker")
    out = tmp_path / "signed"
    assert cli_main(["export", str(finished_run / "run"), "--out", str(out), "--sign", str(key)]) == 0
    assert cli_main(["verify", str(out), "--key", str(pub)]) == 0
    assert check_signature(out, other_pub) == f"{MANIFEST}: not signed by attacker.pub (signature invalid)"
    (out / "adapter" / "adapter_model.safetensors").write_bytes(
        (finished_run / "export" / "merged" / "model.safetensors").read_bytes()[:4096])
    (out / MANIFEST).write_text(manifest_text(out))  # the hashes match the swapped file again
    assert verify(out) == []
    capsys.readouterr()
    assert cli_main(["verify", str(out), "--key", str(pub)]) == 1
    assert "not signed by coordinator.pub" in capsys.readouterr().out


def test_a_bad_signing_key_is_refused_before_anything_is_written(finished_run, tmp_path):
    (tmp_path / "not-a-key.pem").write_text("hello")
    with pytest.raises(ReleaseError, match="cannot read the Ed25519 private key"):
        export_run(finished_run / "run", tmp_path / "out", sign_with=tmp_path / "not-a-key.pem")
    assert not (tmp_path / "out").exists()
