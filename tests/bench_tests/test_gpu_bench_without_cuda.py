"""bench/gpu.py on a machine without CUDA: it says why it measures nothing, exits 0 and writes a
report that says it was skipped (so a CPU-only CI or a busy CPU machine can run it safely)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: bench/gpu.py would measure")
def test_gpu_bench_skips_cleanly_without_cuda(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(BENCH), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=BENCH.parent.parent)
    assert done.returncode == 0, done.stderr
    assert "skipped: no CUDA device" in done.stdout
    assert json.loads(out.read_text()) == {"benchmark": "gpu",
                                           "skipped": "no CUDA device (torch.cuda.is_available() is False)"}
