"""The secure-aggregation benchmark runs all three configurations (incl. Flower's built-in SecAgg+
on the legacy API) on a tiny model, and our masked upload is smaller than Flower's int64 one.
No timing is asserted here; timings come from running the script on the default model."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.simulation
def test_secagg_overhead_benchmark_compares_against_flower_builtin(tiny_model_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "secagg_overhead.py"), "--nodes", "4", "--out", str(tmp_path),
         "--set", f"model.name={json.dumps(str(tiny_model_dir))}", "--set", "model.precision=fp32",
         "--set", "data.records=160", "--set", "train.batch-size=4", "--set", "lora.top-layers=1",
         "--set", "train.local-steps=1"],  # bytes are what this test checks: one step is enough
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"secagg_time_ratio=([\d.]+) bytes_fraction_of_model=([\d.]+) bytes_vs_flower_secaggplus=([\d.]+)",
                     last)
    assert m, last
    assert float(m.group(3)) < 0.6  # uint32 in one array vs Flower's int64 .npy per tensor
    assert 0 < float(m.group(2)) < 0.01
    flower_bytes = list((tmp_path / "3-flower-built-in-secaggplus").glob("flower-node-*.jsonl"))
    assert len(flower_bytes) == 4  # every node's replies were measured after Flower's masking
