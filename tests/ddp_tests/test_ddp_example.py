"""The CIFAR-10 example with --nproc 2: torchrun, two gloo ranks, one job on a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddp_testlib import decisions, lr_history
from shared_testlib import cifar_subset_dir

ROOT = Path(__file__).resolve().parents[2]
DATA = cifar_subset_dir()

pytestmark = pytest.mark.skipif(not (DATA / "data_batch_1").is_file(), reason=f"no CIFAR-10 data at {DATA}")


def test_example_trains_on_two_ranks_as_one_job(live_server, tmp_path):
    server = live_server(tmp_path / "state")
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "examples" / "cifar10.py"), "--nproc", "2", "--tuner", "cosine",
           "--tuner-config", "{T_0: 4, chunk: 3}", "--max-steps", "8", "--batch-size", "32", "--no-progress",
           "--server", server.endpoint, "--job", "cifar-ddp", "--out", str(out), "--data-dir", str(DATA)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["nproc"] == 2 and summary["steps"] == 8 and summary["job"] == "cifar-ddp"
    records = decisions(tmp_path / "state", "cifar-ddp")
    assert len({r["client_id"] for r in records}) == 1  # one job, rank 0's client
    assert [r["kind"] for r in records].count("report") == 3  # 8 steps in chunks of 3, 3 and 2
    assert summary["lrs"] == lr_history(records)[:8]
    assert len(set(summary["lrs"])) > 1
