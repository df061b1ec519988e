"""The dashboard's cost: how fast the job list loads with many jobs, and what an open dashboard
does to the server's reply latency under load.

1. **1,000 jobs.** A server process (``--http-port 0``) gets 1,000 AutoLRS jobs, each a hello and
   two reports (so every row has a summary, a history and a last loss). Then, each time after
   the 1 s list cache has expired: ``GET /api/jobs`` (server-side build + transfer, timed by the
   client), and the list page in headless Chromium from navigation to the table drawn with all
   1,000 rows (the page's own ``performance.now()`` when it finished rendering).
2. **An open dashboard under load.** ``bench/server_load.py``'s 256-job AutoLRS load, in
   alternating rounds of three runs: no dashboard client; headless Chromium showing the job
   list and one job page (each polling every 2 s); and a plain HTTP client in another process
   making the same requests (what serving them costs the server, without the browser's own
   CPU, which here shares the machine's cores with the server and the clients). Reported: each
   run's reply p99 and median, the medians over the rounds, and each arm's p99 ratio to none.
3. **Recording the history** (always on, browser or not): the time ``HistoryRecorder`` takes
   per report, for an AutoLRS trial report (100 losses) and a 500-step schedule report.

    python bench/dashboard.py [--jobs 1000] [--load-jobs 256] [--repeats 4] [--seconds 30]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import zmq

from autolrs.wire import protocol
from autolrs.testing import browser as headless
from autolrs.server.history import HistoryRecorder
from autolrs.server.process import ServerProcess
from autolrs.testing import SimulatedClient
from benchlib import write_report
from server_load import JOB_CONFIG, cpu_seconds, measure

OUT = Path(__file__).resolve().parent / "out"
TARGET_LIST_S = 1.0
TARGET_P99_RATIO = 1.05


# --- 1. the list with many jobs ----------------------------------------------------------------


def fill(endpoint: str, jobs: int, reports: int = 2) -> None:
    """``jobs`` AutoLRS jobs: a hello and ``reports`` reports each, over one REQ socket."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)

    def call(kind, body, job, client, seq):
        sock.send(protocol.dumps(protocol.request(kind, body, job_id=job, client_id=client, seq=seq)))
        if not sock.poll(30_000):
            raise TimeoutError(f"no reply to {kind} of {job}")
        reply = protocol.loads(sock.recv())
        if reply["status"] != "ok":
            raise RuntimeError(f"{kind} of {job}: {reply['error']}")
        return reply

    try:
        for i in range(jobs):
            job, client, sim = f"job-{i:04d}", uuid.uuid4().hex[:12], SimulatedClient(seed=i)
            reply = call("hello", {"tuner": "autolrs", "config": JOB_CONFIG, "initial_lr": 0.1, "step": 0,
                                   "max_steps": None, "has_val_fn": False, "seed": i}, job, client, 0)
            for seq in range(1, reports + 1):
                reply = call("report", sim.execute(reply["body"]["plan"]).to_body(), job, client, seq)
    finally:
        sock.close(0)


def fetch_s(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
    return time.perf_counter() - t0, len(body)


def list_load(jobs: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="autolrs-dash-") as tmp:
        server = ServerProcess(Path(tmp) / "state", "--http-port", "0", "--log-level", "WARNING",
                               "--config", _config(tmp, max_sessions=max(1000, jobs)), lifeline=True)
        try:
            t0 = time.perf_counter()
            fill(server.endpoint, jobs)
            fill_s = time.perf_counter() - t0
            api, size = [], 0
            for _ in range(repeats):
                time.sleep(1.1)  # past the list cache: every request builds the list afresh
                seconds, size = fetch_s(server.dashboard_url + "api/jobs")
                api.append(seconds)
            page = []
            if headless.missing() is None:
                with headless.Browser() as browser:
                    d = browser.driver
                    for _ in range(repeats):
                        time.sleep(1.1)
                        d.get("about:blank")
                        d.get(server.dashboard_url)
                        deadline = time.monotonic() + 60
                        while d.execute_script("return document.body.dataset.rows") != str(jobs):
                            if time.monotonic() > deadline:
                                raise TimeoutError("the list page did not show every job within 60 s")
                            time.sleep(0.02)
                        # performance.now() counts from the navigation's start.
                        page.append(float(d.execute_script("return document.body.dataset.renderedAt")) / 1000)
                    browser.screenshot(OUT / "dashboard-1000-jobs.png", full_page=False)
                    errors = browser.console_errors()
            else:
                errors = [f"no browser: {headless.missing()}"]
        finally:
            server.close()
    return {"jobs": jobs, "fill_s": fill_s, "api_s": api, "api_median_s": statistics.median(api),
            "api_bytes": size, "page_s": page, "page_median_s": statistics.median(page) if page else None,
            "console_errors": errors}


# --- 2. the server's latency with the dashboard open ----------------------------------------------


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and all its descendants (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0.0
    for pid in tree:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError):
            pass
    return total


#: Browser CPU per load run (percent of one core), filled by dashboard_pages.
BROWSER_CPU: list[float] = []


@contextlib.contextmanager
def dashboard_pages(server):
    """Headless Chromium with the job list open in one tab and the first job's page in another."""
    with headless.Browser() as browser:
        driver_pid = browser.driver.service.process.pid
        cpu0, t0 = tree_cpu_seconds(driver_pid), time.monotonic()
        d = browser.driver
        d.get(server.dashboard_url)
        list_tab = d.current_window_handle
        d.switch_to.new_window("tab")
        d.get(server.dashboard_url)  # then the first job's page, once a job exists
        d.execute_script("""
            const open = async () => {
              const r = await fetch('/api/jobs', {cache: 'no-store'});
              const jobs = (await r.json()).jobs;
              if (jobs.length) location.href = '/jobs/' + encodeURIComponent(jobs[0].job_id);
              else setTimeout(open, 500);
            };
            open();""")
        d.switch_to.window(list_tab)
        yield browser
        BROWSER_CPU.append(100 * (tree_cpu_seconds(driver_pid) - cpu0) / (time.monotonic() - t0))


def poll_api(url: str, stop) -> None:
    """What the two open pages ask for, every 2 s: the job list and the first job (a process)."""
    first = None
    while not stop.wait(2.0):
        try:
            with urllib.request.urlopen(url + "api/jobs", timeout=30) as response:
                jobs = json.loads(response.read())["jobs"]
            first = first or (jobs[0]["job_id"] if jobs else None)
            if first:
                urllib.request.urlopen(url + f"api/jobs/{first}", timeout=30).read()
        except OSError:
            pass


@contextlib.contextmanager
def api_poller(server):
    """The same requests as the browser's two pages, from a plain HTTP client in another process:
    what serving them costs the server, without a browser's own CPU on this machine."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    proc = ctx.Process(target=poll_api, args=(server.dashboard_url, stop), daemon=True)
    proc.start()
    try:
        yield proc
    finally:
        stop.set()
        proc.join(30)


ARMS = {"without": None, "browser": dashboard_pages, "api poller": api_poller}


def load_pairs(jobs: int, repeats: int, seconds: float, step_ms: float, processes: int) -> list[dict]:
    rows = []
    for r in range(repeats):
        for arm, during in ARMS.items():
            result = measure(jobs, seconds, step_ms, processes, ["--http-port", "0"], during=during)
            result.update({"arm": arm, "repeat": r})
            if during is dashboard_pages:
                result["browser_cpu_pct"] = BROWSER_CPU[-1]
            rows.append(result)
            browser = f", browser CPU {result['browser_cpu_pct']:.1f}%" if "browser_cpu_pct" in result else ""
            print(f"  repeat {r} {arm:>10}: p99 {result['p99_ms']:7.1f} ms, median {result['median_ms']:6.2f} ms, "
                  f"{result['replies_per_s']:6.1f} replies/s, server CPU {result['server_cpu_pct']:.0f}%{browser}, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
    return rows


# --- 3. recording the history ----------------------------------------------------------------------


def record_cost(reports: int = 400) -> dict:
    out = {}
    with tempfile.TemporaryDirectory(prefix="autolrs-hist-") as tmp:
        recorder = HistoryRecorder(tmp)
        for name, steps, before in (("autolrs trial, 100 losses", 100, {"phase": "trial", "stage": 3, "trial": 2}),
                                    ("schedule chunk, 500 losses", 500, None)):
            plan = [{"op": "set_lr", "lr": 0.1}, {"op": "run", "steps": steps, "start_step": 0}]
            times = []
            for i in range(1, reports + 1):
                body = {"step": i * steps, "steps": steps}
                losses = [1.0 / (j + 1) for j in range(steps)]
                t0 = time.perf_counter()
                recorder.record_report(name.split()[0], plan, body, losses, [], None, before, before)
                times.append((time.perf_counter() - t0) * 1000)
            out[name] = {"median_ms": statistics.median(times), "p99_ms": sorted(times)[int(0.99 * (len(times) - 1))],
                         "max_ms": max(times)}
    return out


def _config(tmp: str, **server) -> str:
    path = Path(tmp) / "server.yaml"
    path.write_text("server: {" + ", ".join(f"{k}: {v}" for k, v in server.items()) + "}\n")
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=1000, help="jobs for the list-load measurement")
    p.add_argument("--list-repeats", type=int, default=5)
    p.add_argument("--load-jobs", type=int, default=256, help="simulated jobs for the latency measurement")
    p.add_argument("--repeats", type=int, default=4, help="rounds of the latency measurement (one run per arm)")
    p.add_argument("--seconds", type=float, default=30.0, help="measurement window of each load run")
    p.add_argument("--step-ms", type=float, default=100.0)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--skip-load", action="store_true", help="only the list load and the recording cost")
    p.add_argument("--out", default=str(OUT / "dashboard.json"))
    args = p.parse_args()
    if headless.missing() is not None:
        print(f"note: {headless.missing()}; the browser measurements are left out", flush=True)

    cost = record_cost()
    print("history recording per report:")
    for name, c in cost.items():
        print(f"  {name:<28} median {c['median_ms']:.3f} ms, p99 {c['p99_ms']:.3f} ms, max {c['max_ms']:.2f} ms")

    print(f"job list with {args.jobs} jobs:", flush=True)
    lst = list_load(args.jobs, args.list_repeats)
    page = lst["page_median_s"]
    print(f"  filled in {lst['fill_s']:.1f} s; GET /api/jobs median {lst['api_median_s'] * 1000:.0f} ms "
          f"({lst['api_bytes'] / 1024:.0f} kB); page rendered median "
          f"{'-' if page is None else f'{page * 1000:.0f} ms'} (target < {TARGET_LIST_S:g} s: "
          f"{'meets' if page is not None and page < TARGET_LIST_S and lst['api_median_s'] < TARGET_LIST_S else 'misses'}); "
          f"console errors: {len(lst['console_errors'])}", flush=True)

    load = None
    if not args.skip_load and headless.missing() is None:
        print(f"{args.load_jobs}-job load, alternating {', '.join(ARMS)} "
              f"({args.repeats} rounds, {args.seconds:g} s windows):", flush=True)
        runs = load_pairs(args.load_jobs, args.repeats, args.seconds, args.step_ms, args.processes)
        med = {arm: {k: statistics.median(r[k] for r in runs if r["arm"] == arm)
                     for k in ("p99_ms", "median_ms", "ping_p99_ms", "server_cpu_pct", "replies_per_s")}
               for arm in ARMS}
        ratios = {arm: med[arm]["p99_ms"] / med["without"]["p99_ms"] for arm in ARMS if arm != "without"}
        print(f"{'':>10} {'p99 ms':>8} {'median ms':>10} {'ping p99':>9} {'CPU %':>6} {'replies/s':>10} {'p99 ratio':>10}")
        for arm in ARMS:
            m = med[arm]
            print(f"{arm:>10} {m['p99_ms']:>8.1f} {m['median_ms']:>10.2f} {m['ping_p99_ms']:>9.1f} "
                  f"{m['server_cpu_pct']:>6.0f} {m['replies_per_s']:>10.1f} {ratios.get(arm, 1.0):>10.3f}")
        for arm, ratio in ratios.items():
            print(f"p99 ratio {arm} / without (medians of {args.repeats}): {ratio:.3f} "
                  f"({'meets' if ratio < TARGET_P99_RATIO else 'misses'} the target of < {TARGET_P99_RATIO:g})")
        load = {"runs": runs, "medians": med, "p99_ratios": ratios}

    write_report(args.out, {"benchmark": "dashboard", "target_list_s": TARGET_LIST_S,
                            "target_p99_ratio": TARGET_P99_RATIO, "record_cost": cost, "list": lst, "load": load,
                            "load_average": os.getloadavg()})


if __name__ == "__main__":
    main()
