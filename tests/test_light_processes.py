"""Processes that must start light, without torch, transformers, PEFT or Opacus.

Deployed, Flower starts a fresh ClientApp process for every message, so whatever the ClientApp
module imports is paid four more times per round for the SecAgg+ stages, which work on numpy
arrays and keys only. The first check runs in a fresh interpreter: 4 simulated nodes keep a delta
each (as the train handler leaves it), a real ``SecAggServer`` drives the share, mask, confirm and
unmask stages through the real ClientApp over the in-memory grid, the coordinator's decoded sum
must equal the nodes' true weighted sum, and none of those libraries may have been imported by
then. The operator's key, roster and app commands are held to the same line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "transformers", "peft", "opacus"]

SCRIPT = r"""
import json, sys
import numpy as np
from loopback import LoopbackGrid  # imports the real ClientApp module
from fedtune.common.adapters import adapter_hash, flatten
from fedtune.common.config import RunConfig
from fedtune.common.secagg.round import Advert, RoundParams, round_id
from fedtune.coordinator.secagg import SecAggServer
from fedtune.node import secagg as secagg_client
from fedtune.node.identity import node_trust
from fedtune.node.policy import NodePolicy

run_id, rnd, clip = 7, 1, 1.0
cfg = RunConfig()
grid = LoopbackGrid(4, cfg.to_flat(), run_id=run_id)
rng = np.random.default_rng(0)
global_arrays = {"layer.lora_A.weight": rng.normal(size=(4, 16)).astype(np.float32),
                 "layer.lora_B.weight": np.zeros((16, 4), np.float32)}
adverts, want = {}, 0.0
for k, (nid, ctx) in enumerate(grid.contexts.items()):
    update = {n: (0.01 * rng.normal(size=a.shape)).astype(np.float32) for n, a in global_arrays.items()}
    trust = node_trust(ctx.node_config, NodePolicy.of(ctx.node_config, cfg))
    advert, _ = secagg_client.start(ctx.state, trust, run_id, rnd, global_arrays, update, 10 + k, clip,
                                    cfg.secagg.max_weight)
    adverts[nid], want = Advert.from_record(advert), want + (10 + k) * flatten(update).astype(np.float64)
params = RoundParams(round_id(run_id, rnd), adapter_hash(global_arrays), want.size + 1, clip, cfg.secagg.max_weight)
got = SecAggServer(grid, rnd, params, cfg.secagg.dropout, 30.0, {}).run(adverts)
print(json.dumps({"stages": sorted({t for t, _, _ in grid.sent}), "survivors": len(got.survivors),
                  "weight": got.total_weight, "max_error": float(np.max(np.abs(got.weighted_sum - want))),
                  "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def run_fresh(script: str, *args: str) -> dict:
    """Run ``script`` in a fresh interpreter on this tree (``HEAVY`` defined); its last line, as JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    res = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{script}", *args], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_a_secagg_round_through_the_client_app_imports_no_torch_transformers_peft_or_opacus():
    out = run_fresh(SCRIPT)
    assert out["stages"] == ["train.secagg_confirm", "train.secagg_mask", "train.secagg_share", "train.secagg_unmask"]
    assert out["survivors"] == 4 and abs(out["weight"] - (10 + 11 + 12 + 13)) < 1e-3
    assert out["max_error"] < 1e-3  # the exact sum, up to SecAgg+'s fixed-point quantisation
    assert out["heavy"] == [], f"a SecAgg+ stage message loaded {out['heavy']}"


KEY_COMMANDS = r"""
import json, sys
from fedtune.cli import main
out = sys.argv[1]
codes = [main(["node-key", "--out", out, "--name", "hospital-0"]),
         main(["roster", "build", "--out", out + "/roster.toml", out + "/hospital-0.roster-entry"]),
         main(["app", "hash", sys.argv[2]]),
         main(["roster", "build", "--out", out + "/bad.toml", out + "/missing.roster-entry"])]
print(json.dumps({"codes": codes, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def test_key_roster_and_app_commands_run_without_loading_torch_even_when_one_fails(tmp_path):
    """An operator's key, roster and app-hash commands (and the deployment scripts that call them) start
    in about a second: they never load torch and co., not even to report a user error (exit code 2)."""
    out = run_fresh(KEY_COMMANDS, str(tmp_path), str(ROOT))
    assert out["codes"] == [0, 0, 0, 2]
    assert out["heavy"] == [], f"an operator command loaded {out['heavy']}"


def test_every_error_class_named_for_lazy_matching_exists():
    """The tables above name classes by module so nothing is imported to match them: a renamed or
    moved class must fail here, not silently stop being recognised."""
    import importlib

    from fedtune.cli import USER_ERRORS
    from fedtune.node.replies import CONTENT_FREE

    for table in (USER_ERRORS, CONTENT_FREE):
        for module, name in table.items():
            assert issubclass(getattr(importlib.import_module(module), name), Exception), (module, name)
