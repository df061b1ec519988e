"""Smoke test of an installed autolrs wheel, run by .ci/package_check.sh from outside the checkout.

    python package_smoke.py MODULES_FILE SITE_PACKAGES SERVER_EXE

MODULES_FILE lists, one a line, every module the checkout holds (under its installed name);
each must import from SITE_PACKAGES (the fresh environment), not from a checkout. Then
SERVER_EXE (the wheel's ``autolrs-server`` console script) reports the package's version, serves
a job trained with the callback on scikit-learn's digits, and a range test (``LRFinder``), and
stops cleanly. Any failure exits non-zero with one line saying what broke.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def fail(message: str) -> None:
    print(f"package smoke test: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check_imports(modules: list[str], site: Path) -> None:
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            fail(f"import {name}: {type(exc).__name__}: {exc} (left out of setup.py's packages?)")
        origin = Path(module.__file__ or "").resolve()
        if site not in origin.parents:
            fail(f"{name} was imported from {origin}, not from the installed wheel under {site}")
    data = importlib.resources.files("autolrs.server")
    for resource in ("defaults.yaml", "dashboard/static/index.html"):
        if not data.joinpath(resource).is_file():
            fail(f"package data autolrs/server/{resource} is missing from the wheel")
    if not importlib.resources.files("autolrs").joinpath("py.typed").is_file():
        fail("autolrs/py.typed is missing from the wheel")
    print(f"imported {len(modules)} modules from the wheel; package data and py.typed present")


def check_version(server_exe: str) -> None:
    import autolrs

    installed = importlib.metadata.version("autolrs")
    out = subprocess.run([server_exe, "--version"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0 or autolrs.__version__ not in out.stdout.split():
        fail(f"autolrs-server --version printed {out.stdout.strip()!r}; autolrs.__version__ is {autolrs.__version__}")
    if installed != autolrs.__version__:
        fail(f"the distribution's version {installed} is not autolrs.__version__ {autolrs.__version__}")
    print(f"version {installed}: metadata, autolrs.__version__ and autolrs-server --version agree")


def start_server(server_exe: str, state_dir: Path) -> tuple[subprocess.Popen, str]:
    log = open(state_dir.parent / "server.log", "w")
    proc = subprocess.Popen([server_exe, "--port", "0", "--state-dir", str(state_dir)], stdout=subprocess.PIPE,
                            stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the server prints its endpoint once it accepts requests
    match = re.match(r"autolrs-server listening on (tcp://\S+)", line)
    if not match:
        proc.kill()
        fail(f"autolrs-server did not start: {line!r}; log: {(state_dir.parent / 'server.log').read_text()[-2000:]}")
    return proc, match.group(1)


def digits_batches(batch_size: int = 64):
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x) - batch_size + 1, batch_size)]


def make_model():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def check_training(endpoint: str) -> None:
    import torch

    from autolrs.callbacks import AutoLRS

    model, optimizer = make_model()
    batches = digits_batches()
    criterion = torch.nn.CrossEntropyLoss()
    steps = 2 * len(batches)
    # cosine with one period over the run: the server sends every step's LR, so the LR at the
    # end can only differ from the start if the server's plans reached the loop.
    with AutoLRS(model, optimizer, tuner="cosine", config={"T_0": steps}, server=endpoint, max_steps=steps,
                 job="package-smoke") as cb:
        losses = []
        for _ in range(2):
            for x, y in batches:
                optimizer.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                cb.step(loss)
                losses.append(loss.item())
    last_lr = optimizer.param_groups[0]["lr"]
    if not last_lr < 0.05:
        fail(f"the cosine tuner's LRs did not reach the loop: LR {last_lr} after {steps} of {steps} steps")
    if not losses[-1] < losses[0]:
        fail(f"training did not lower the loss ({losses[0]:.3f} -> {losses[-1]:.3f})")
    print(f"trained {steps} steps with the callback: LR 0.1 -> {last_lr:.4f}, loss {losses[0]:.3f} -> {losses[-1]:.3f}")


def check_range_test(endpoint: str) -> None:
    import torch

    from autolrs.callbacks import LRFinder

    model, optimizer = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    finder = LRFinder(model, optimizer, torch.nn.CrossEntropyLoss(), server=endpoint)
    finder.range_test(digits_batches(32), start_lr=1e-4, end_lr=10, num_iter=40)
    lrs = finder.history["lr"]
    if len(lrs) < 10 or not lrs[-1] > lrs[0]:
        fail(f"the range test recorded {len(lrs)} points: {lrs[:3]}...")
    finder.reset()
    if not all(torch.equal(a, b) for a, b in zip(before, model.parameters())):
        fail("LRFinder.reset() did not restore the model")
    print(f"range test: {len(lrs)} points, LR {lrs[0]:.2g} -> {lrs[-1]:.2g}, suggestion {finder.suggestion()}")


def check_status(server_exe: str, endpoint: str) -> None:
    out = subprocess.run([server_exe, "status", "--server", endpoint], capture_output=True, text=True, timeout=60)
    if out.returncode != 0 or "package-smoke" not in out.stdout:
        fail(f"autolrs-server status did not list the job: {out.stdout.strip()!r} {out.stderr.strip()!r}")
    print("autolrs-server status lists the job")


def main() -> None:
    modules_file, site, server_exe = sys.argv[1:4]
    if Path.cwd().resolve() == Path(__file__).resolve().parents[1]:
        fail("run from outside the checkout")
    check_imports(Path(modules_file).read_text().split(), Path(site).resolve())
    check_version(server_exe)
    with tempfile.TemporaryDirectory(prefix="autolrs-smoke-") as tmp:
        proc, endpoint = start_server(server_exe, Path(tmp) / "state")
        try:
            check_training(endpoint)
            check_range_test(endpoint)
            check_status(server_exe, endpoint)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                fail("autolrs-server did not stop within 30 s of SIGTERM")
        if code != 0:
            fail(f"autolrs-server exited with {code}: {(Path(tmp) / 'server.log').read_text()[-2000:]}")
    print("package smoke test: passed")


if __name__ == "__main__":
    os.environ.pop("AUTOLRS_SERVER", None)  # only the server started here
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s)")
