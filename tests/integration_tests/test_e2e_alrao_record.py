"""Alrao in the CIFAR-10 example with the server's part: the interval from a range test the
server runs, and the run recorded by the server (tuner ``record``) without touching the LRs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from shared_testlib import cifar_subset_dir

ROOT = Path(__file__).resolve().parents[2]
DATA = cifar_subset_dir()

pytestmark = pytest.mark.skipif(not (DATA / "data_batch_1").is_file(), reason=f"no CIFAR-10 data at {DATA}")


def cifar10_example():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import cifar10
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return cifar10


def test_alrao_interval_from_a_range_test_and_the_run_recorded(live_server, tmp_path):
    server = live_server(tmp_path / "state")
    summary = cifar10_example().main([
        "--tuner", "alrao", "--lr-min", "auto", "--lr-max", "auto", "--max-steps", "24", "--batch-size", "32",
        "--model", "small_cnn", "--device", "cpu", "--data-dir", str(DATA), "--out", str(tmp_path / "out"),
        "--server", server.endpoint, "--job", "alrao-run", "--no-progress"])
    interval = summary["tuner_config"]
    assert interval["interval_source"] == "range test"
    lo, hi = interval["lr_min"], interval["lr_max"]
    assert 1e-6 <= lo < hi <= 10.0 and hi / lo >= 10 ** 3 * 0.999  # at least three decades
    assert summary["steps"] == 24

    # The range test ran as its own job on a throwaway model; the Alrao run is the record job.
    jobs = {p.name for p in (tmp_path / "state" / "jobs").iterdir()}
    assert "alrao-run" in jobs and len(jobs) == 2
    records = [json.loads(line) for line in
               (tmp_path / "state" / "jobs" / "alrao-run" / "decisions.jsonl").read_text().splitlines()]
    plans = [r["plan"] for r in records if r.get("plan")]
    assert plans and all(a["op"] in ("run", "stop") for p in plans for a in p)  # never an LR
    last = [r["summary"] for r in records if r.get("summary")][-1]
    assert (last["lr_min"], last["lr_max"], last["interval_source"]) == (lo, hi, "range test")
    assert last["step"] == 24 and last["trace"]["loss"][-1][0] == 24
    reported = [x for r in records if r.get("observation") for x in [r["observation"]]]
    assert reported and all(o["n_losses"] > 0 for o in reported)
