"""``fedtune export RUN_DIR --out DIR [--merged] [--dtype bf16|fp32]``.

DIR/adapter/   the final global adapter (PEFT folder) with its model card
DIR/merged/    with --merged: the base model with the adapter merged in (PEFT's merge_and_unload),
               safetensors + tokenizer + generation config; plain transformers loads it
DIR/run/       the run's run.json, metrics.jsonl and report.md, as they were
DIR/MANIFEST.sha256   every file above
DIR/MANIFEST.sha256.sig  with --sign KEY: the releaser's Ed25519 signature over the manifest

Written into a temp folder beside DIR and renamed at the end: a failure leaves no half export.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from fedtune.common.files import atomic_directory, atomic_write_text
from fedtune.release.manifest import MANIFEST, load_key, manifest_text, sign
from fedtune.release.model_card import render_card
from fedtune.release.run_files import ReleaseError, RunFiles

RUN_RECORDS = ("run.json", "metrics.jsonl", "report.md")
DTYPES = ("bf16", "fp32")


@dataclass(frozen=True)
class Exported:
    folder: Path
    sizes: dict[str, int]  # part -> bytes
    seconds: dict[str, float]  # part -> seconds


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def export_run(run_dir: str | Path, out: str | Path, merged: bool = False, dtype: str = "bf16",
               sign_with: str | Path | None = None) -> Exported:
    """``sign_with``: an Ed25519 private key (PEM) whose signature over the manifest says who released it."""
    if dtype not in DTYPES:
        raise ReleaseError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    run = RunFiles.open(run_dir)  # refused here, before anything is written
    if sign_with is not None:
        load_key(Path(sign_with), private=True)  # a bad key is refused before the export, not after
    if merged and run.config.get("model.quantization") == "4bit":
        raise ReleaseError("this run trained on a 4-bit base: merge the adapter into the full-precision base "
                           "(export without --merged, then merge against the original weights)")
    target = Path(out).expanduser()
    if target.exists():
        raise ReleaseError(f"{target} already exists: choose a new --out (an export is never overwritten)")
    seconds: dict[str, float] = {}
    with atomic_directory(target) as tmp:
        start = time.perf_counter()
        shutil.copytree(run.adapter, tmp / "adapter")
        atomic_write_text(tmp / "adapter" / "README.md", render_card(run, "adapter"))
        seconds["adapter"] = time.perf_counter() - start
        if merged:
            start = time.perf_counter()
            write_merged(run, tmp / "merged", dtype)
            seconds["merged"] = time.perf_counter() - start
        (tmp / "run").mkdir()
        for name in RUN_RECORDS:
            if (run.folder / name).is_file():
                shutil.copy2(run.folder / name, tmp / "run" / name)
        atomic_write_text(tmp / MANIFEST, manifest_text(tmp))
        if sign_with is not None:
            sign(tmp, sign_with)
    sizes = {part: folder_bytes(target / part) for part in ("adapter", "merged") if (target / part).is_dir()}
    return Exported(target, sizes, seconds)


def write_merged(run: RunFiles, folder: Path, dtype: str) -> None:
    """Base + adapter merged into plain weights, saved as transformers saves any model."""
    import torch
    from peft import PeftModel

    from fedtune.common.config import ModelConfig
    from fedtune.common.model import load_base_model, load_tokenizer

    name = str(run.config.get("model.name"))
    base = load_base_model(ModelConfig(name=name, device="cpu"))
    model = PeftModel.from_pretrained(base, str(run.adapter)).merge_and_unload()
    model = model.to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    model.config.use_cache = True  # fedtune turns the cache off for training; a served model wants it
    model.save_pretrained(folder, safe_serialization=True)
    load_tokenizer(name).save_pretrained(folder)
    if (run.adapter / "fedtune.json").is_file():  # the system prompt the adapter was trained with
        shutil.copy2(run.adapter / "fedtune.json", folder / "fedtune.json")
    atomic_write_text(folder / "README.md", render_card(run, "merged"))
