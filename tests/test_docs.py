"""The documentation cannot drift from the code: the configuration reference is the generator's output,
every relative link points at a file and heading that exist, the README stays short and links every
guide, and every shell block marked runnable (```` ```bash runnable ````) runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedtune.lab.config_reference import PAGE, reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_PAGES = sorted((ROOT / "docs").rglob("*.md"))
ALL_PAGES = [README, *DOC_PAGES, *sorted(ROOT.glob("*/README.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
RUNNABLE = re.compile(r"^```bash runnable\n(.*?)^```", re.M | re.S)


def test_the_configuration_reference_page_is_exactly_what_the_code_declares():
    page = (ROOT / PAGE).read_text(encoding="utf-8")
    assert page == reference_markdown(), (
        f"{PAGE} differs from the declarations in fedtune/common/config.py and fedtune/node/node_config_keys.py: "
        f"regenerate it with `fedtune config reference --out {PAGE}`")


def test_the_reference_lists_every_run_config_and_node_config_key_with_its_default():
    from fedtune.common.config import RunConfig
    from fedtune.node.node_config_keys import NODE_KEYS

    page = reference_markdown()
    for key, value in RunConfig().to_flat().items():
        shown = str(value).lower() if isinstance(value, bool) else (f'"{value}"' if isinstance(value, str) else value)
        assert f"| `{key}` | {type(value).__name__} | `{shown}` |" in page, key
    for key in NODE_KEYS:
        assert f"| `{key}` |" in page, key


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    return broken


@pytest.mark.parametrize("page", ALL_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page):
    assert broken_links(page) == []


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "b.md").write_text("# Only heading\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#only-heading) [gone](c.md) [bad anchor](b.md#nope) [web](https://x.org/y)\n")
    assert broken_links(page) == ["c.md (no such file)", "b.md#nope (no heading #nope in b.md)"]


def test_the_readme_is_short_and_links_every_guide_explanation_and_reference():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150, "the README is the front door: keep it to about 150 lines, put the rest in docs/"
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in LINK.findall(text)}
    for folder in ("guides", "explanations", "reference"):
        for page in (ROOT / "docs" / folder).glob("*.md"):
            assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"


# Settings appended to every `fedtune simulate` / `privacy audit` a runnable block runs: the tiny model, one short
# round. Later `--set`s win, so these replace the documented values of the same keys (nothing else changes).
SHORT = ["--set", "model.precision=fp32", "--set", "lora.top-layers=0", "--set", "federation.rounds=1",
         "--set", "data.records=120", "--set", "train.local-steps=1", "--set", "train.batch-size=4",
         "--set", "privacy.noise-multiplier=1.0", "--set", "simulation.nodes=3", "--set", "federation.min-nodes=3",
         "--set", "simulation.cpus-per-node=1"]
WRAPPER = """#!/usr/bin/env bash
# fedtune with short settings for simulations (tests/test_docs.py)
case "$1 $2" in
  simulate*|"privacy audit") exec {real} "$@" --set model.name={model} {short} ;;
esac
exec {real} "$@"
"""


def runnable_blocks(page: Path) -> list[str]:
    return RUNNABLE.findall(page.read_text(encoding="utf-8"))


RUNNABLE_PAGES = [p for p in ALL_PAGES if runnable_blocks(p)]


def test_the_readme_and_every_guide_reader_has_runnable_commands():
    names = {p.relative_to(ROOT).as_posix() for p in RUNNABLE_PAGES}
    assert {"README.md", "docs/guides/node-operator.md", "docs/guides/coordinator.md",
            "docs/guides/researcher.md"} <= names


def run_blocks(blocks: list[str], tmp_path: Path, model_dir: Path) -> str | None:
    """Run ``blocks`` in order in a fresh folder that sees the checkout's presets and scripts, with a fresh
    HOME; None when every block exits 0, else the failing block with its output."""
    from fedtune.common.files import cache_root

    work, home, bin_dir = tmp_path / "work", tmp_path / "home", tmp_path / "bin"
    for d in (work, home, bin_dir):
        d.mkdir(parents=True)
    for name in ("simulations", "server", "clients"):
        (work / name).symlink_to(ROOT / name)
    (work / ".venv").symlink_to(Path(sys.prefix))
    wrapper = bin_dir / "fedtune"
    wrapper.write_text(WRAPPER.format(real=Path(sys.executable).parent / "fedtune", model=model_dir,
                                      short=" ".join(SHORT)))
    wrapper.chmod(0o755)
    env = {**os.environ, "HOME": str(home), "FEDTUNE_CACHE_DIR": str(cache_root()), "HF_HUB_OFFLINE": "1",
           "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    for i, block in enumerate(blocks):
        script = f'set -euo pipefail\nfedtune() {{ "{wrapper}" "$@"; }}\nexport -f fedtune\n{block}'  # wins over PATH
        done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return (f"block {i + 1} failed ({done.returncode}):\n{block}\n--- stdout\n{done.stdout[-4000:]}\n"
                    f"--- stderr\n{done.stderr[-4000:]}")
    return None


def test_a_failing_documented_command_is_reported(tmp_path, tiny_model_dir):
    ok = "fedtune data synthetic --out demo/r.jsonl --records 20\nfedtune data check --no-tokens demo/r.jsonl\n"
    assert run_blocks([ok], tmp_path / "a", tiny_model_dir) is None
    failed = run_blocks([ok, "fedtune data check demo/missing.jsonl\necho never\n"], tmp_path / "b", tiny_model_dir)
    assert failed is not None and failed.startswith("block 2 failed (2)") and "missing.jsonl" in failed
    assert "never" not in failed.split("--- stdout")[1]


@pytest.mark.slow
@pytest.mark.simulation
@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_runnable_command_in_the_docs_runs(page, tmp_path, tiny_model_dir):
    """Each page's runnable blocks, in order, in one folder: simulations run on the tiny model with SHORT."""
    failed = run_blocks(runnable_blocks(page), tmp_path, tiny_model_dir)
    assert failed is None, f"{page.relative_to(ROOT)}: {failed}"


def test_the_node_config_template_holds_only_declared_keys_and_states_their_defaults():
    """clients/node-config.toml is what operators copy: every key in it (set or commented out) must be one a node
    reads, and a commented-out `key = value` must show the default the node really uses."""
    import tomllib

    from fedtune.node.node_config_keys import NODE_KEYS

    text = (ROOT / "clients" / "node-config.toml").read_text(encoding="utf-8")
    assert set(tomllib.loads(text)) <= set(NODE_KEYS)
    commented = re.findall(r"^# ([a-z-]+) = (\S+)", text, re.M)
    assert len(commented) >= 10
    for key, value in commented:
        default = NODE_KEYS[key].default
        if default not in (None, ""):  # unset ones show an example value
            assert tomllib.loads(f"v = {value}")["v"] == default, key


def test_the_node_operators_table_explains_exactly_the_keys_a_node_reads():
    """The guide's table says what each node-config key protects; it must neither miss a key nor explain one
    the node does not read (the reference is generated; this table is prose, so it is held to the same list)."""
    from fedtune.node.node_config_keys import NODE_KEYS

    text = (ROOT / "docs" / "guides" / "node-operator.md").read_text(encoding="utf-8")
    table = text[text.index("| key | default | what it protects |"):]
    table = table[:table.index("\n\n")]
    explained = {k for row in table.splitlines()[2:] for k in re.findall(r"`([a-z-]+)`", row.split("|")[1])}
    assert explained == set(NODE_KEYS)
