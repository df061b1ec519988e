"""One server, many AutoLRS jobs: reply latency, throughput and memory as the job count grows.

For each N, a fresh server process (``python -m autolrs.server``) serves N simulated training
jobs. Each job is a thread with its own REQ socket on loopback (spread over several client
processes so the clients' own GIL does not add to the latencies) that runs the real protocol:
``hello`` for the ``autolrs`` tuner, then for every plan it carries the plan out on
:class:`autolrs.testing.SimulatedClient` (a synthetic loss, no torch), sleeps ``steps *
step_ms`` as if it trained those steps, and sends the ``report``. Jobs start spread over one
trial's time so they do not move in lockstep. A probe thread pings the server every 100 ms: its
latency is what any request waits behind the others (the AutoLRS replies also include the job's
own GP fit and forecast, tens of ms, even with N = 1).

The server runs its tuners in ``server.processes`` tuner processes (``--server-processes``;
default the config's ``auto``, one per core; 0 runs them in the server process); the clock
starts once they are all ready.

Latencies are client-side, from send to reply, of the requests sent in the measurement window
(after every job's hello). Memory and CPU count the server process and its children (the tuner
processes and their forkserver): RSS at the end, the server process's own peak (VmHWM), and the
proportional set size (PSS: shared pages split between the processes that share them, so forked
pages are not counted once per process); memory per job is the PSS added over the idle server,
divided by N. CPU is the server tree's CPU time over the window. For scale, the bench first
times the tuner alone (``tell`` + ``ask`` per report, in this process, no server): the floor
under any reply's latency.

    python bench/server_load.py [--jobs 1 16 64 256] [--seconds 20] [--step-ms 100] [--server-processes N]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import zmq

from autolrs.wire import messages, protocol
from autolrs.server import ServerProcess
from autolrs.server.cli import request
from autolrs.testing import SimulatedClient
from autolrs.tuners import make_tuner
from benchlib import write_report

TARGET_P99_MS = 50.0
TARGET_PING_P99_MS = 5.0
#: AutoLRS knobs of every simulated job: the tuner's defaults except a shorter cap on stages.
JOB_CONFIG = {"tau": 1000, "k": 10, "trial_fraction": 0.1, "tau_max": 4000}
REPLY_TIMEOUT_S = 10.0


class Caller:
    """A REQ socket that resends on a fresh socket after a timeout (same seq, lazy pirate)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.ctx = zmq.Context.instance()
        self.sock = self._open()
        self.timeouts = 0

    def _open(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return sock

    def call(self, frame: bytes) -> dict:
        while True:
            self.sock.send(frame)
            if self.sock.poll(int(REPLY_TIMEOUT_S * 1000), zmq.POLLIN):
                return protocol.loads(self.sock.recv())
            self.timeouts += 1
            self.sock.close(0)
            self.sock = self._open()

    def close(self) -> None:
        self.sock.close(0)


def run_job(endpoint: str, index: int, step_s: float, start_at: float, measure_from: float, stop_at: float,
            samples: list, stats: dict) -> None:
    """One simulated training job; appends (kind, latency_s) of the requests sent in the window."""
    caller = Caller(endpoint)
    client_id = uuid.uuid4().hex[:16]
    job = f"load-{index}-{client_id[:6]}"
    sim = SimulatedClient(seed=index)
    time.sleep(max(0.0, start_at - time.time()))
    seq = 0
    credential = None  # the job's credential, from hello's reply: later requests must carry it

    def call(kind: str, body: dict) -> dict:
        nonlocal seq
        frame = protocol.dumps(protocol.request(kind, body, job_id=job, client_id=client_id, seq=seq,
                                                credential=credential))
        seq += 1
        sent_wall, t0 = time.time(), time.perf_counter()
        reply = caller.call(frame)
        latency = time.perf_counter() - t0
        if measure_from <= sent_wall < stop_at:
            samples.append((kind, latency))
        if reply.get("status") != "ok":
            stats["errors"] = stats.get("errors", 0) + 1
            stats.setdefault("first_error", f"{kind}: {reply}")
        return reply

    reply = call("hello", messages.Hello("autolrs", JOB_CONFIG, initial_lr=0.1, seed=index).to_body())
    credential = (reply.get("body") or {}).get("credential")
    while time.time() < stop_at and reply.get("status") == "ok":
        obs = sim.execute(reply["body"]["plan"])
        if obs is None:
            break
        # Train the segment: its steps take step_s each (cut short at the end of the run).
        time.sleep(max(0.0, min(obs.steps * step_s, stop_at - time.time())))
        if time.time() >= stop_at:
            break
        reply = call("report", messages.Report(obs).to_body())
    stats["timeouts"] = stats.get("timeouts", 0) + caller.timeouts
    caller.close()


def client_process(endpoint: str, indices: list[int], step_s: float, stagger: float, seconds: float,
                   ready: mp.Queue, go: mp.Queue, out: mp.Queue) -> None:
    """Run the jobs ``indices`` as threads once the start time comes from ``go``; put
    (samples, stats) on ``out`` at the end."""
    # One REQ socket per job: lift ZeroMQ's default limit of 1,023 sockets per context.
    zmq.Context.instance().set(zmq.MAX_SOCKETS, len(indices) + 64)
    ready.put(os.getpid())
    start = go.get()
    measure_from, stop_at = window(start, stagger, seconds)
    rng = random.Random(indices[0] if indices else 0)
    samples: list = []
    stats: dict = {}
    threads = [threading.Thread(target=run_job, args=(endpoint, i, step_s, start + rng.uniform(0, stagger),
                                                      measure_from, stop_at, samples, stats), daemon=True)
               for i in indices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(stop_at - time.time() + 2 * REPLY_TIMEOUT_S)
    out.put((samples, stats))


def window(start: float, stagger: float, seconds: float) -> tuple[float, float]:
    """(measure_from, stop_at): measuring starts once every job has sent its hello."""
    measure_from = start + stagger + 1.0
    return measure_from, measure_from + seconds


def probe(endpoint: str, measure_from: float, stop_at: float, samples: list) -> None:
    caller = Caller(endpoint)
    frame = protocol.dumps(protocol.request("ping"))
    while time.time() < stop_at:
        t_wall, t0 = time.time(), time.perf_counter()
        caller.call(frame)
        if t_wall >= measure_from:
            samples.append(time.perf_counter() - t0)
        time.sleep(0.1)
    caller.close()


def memory_kb(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants now (the server, its forkserver, its tuner processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def tree_memory_kb(pid: int) -> dict:
    """RSS and PSS of ``pid`` and its descendants, summed."""
    out = {"rss": 0, "pss": 0, "processes": 0}
    for p in process_tree(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower()] += int(value.split()[0])
        out["processes"] += 1
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU time so far of ``pid`` and its living descendants."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(p)
    return total


def wait_for_tuner_processes(endpoint: str, timeout: float = 300.0) -> list[dict]:
    """The server's tuner processes once all are ready (none with ``processes: 0``)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = request(endpoint, "status", 30.0)["body"]["server"].get("tuner_processes", [])
        if all(r["ready"] for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise RuntimeError(f"tuner processes not ready after {timeout:g} s: {rows}")
        time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def measure(n: int, seconds: float, step_ms: float, processes: int, server_args: list[str],
            during=None) -> dict:
    """``during(server)`` (optional): a context manager held from before the jobs start until the
    window ends, e.g. a browser with the server's dashboard open (bench/dashboard.py)."""
    step_s = step_ms / 1000
    stagger = JOB_CONFIG["tau"] * JOB_CONFIG["trial_fraction"] * step_s  # one trial
    with tempfile.TemporaryDirectory(prefix="autolrs-load-") as tmp, contextlib.ExitStack() as stack:
        server = ServerProcess(Path(tmp) / "state", "--log-level", "WARNING", *server_args, lifeline=True)
        try:
            tuner_processes = len(wait_for_tuner_processes(server.endpoint))
            if during is not None:
                stack.enter_context(during(server))
            idle = tree_memory_kb(server.proc.pid)
            ctx = mp.get_context("spawn")
            ready, go, out = ctx.Queue(), ctx.Queue(), ctx.Queue()
            shares = [list(range(p, n, processes)) for p in range(min(processes, n))]
            procs = [ctx.Process(target=client_process, args=(server.endpoint, share, step_s, stagger, seconds,
                                                              ready, go, out), daemon=True)
                     for share in shares]
            for p in procs:
                p.start()
            for _ in procs:  # every client process is up before the clock starts (spawning is slow)
                ready.get(timeout=120)
            start = time.time() + 0.2
            for _ in procs:
                go.put(start)
            measure_from, stop_at = window(start, stagger, seconds)
            pings: list[float] = []
            probe_thread = threading.Thread(target=probe, args=(server.endpoint, measure_from, stop_at, pings))
            probe_thread.start()
            time.sleep(max(0.0, measure_from - time.time()))
            cpu_start, load_start = tree_cpu_seconds(server.proc.pid), os.getloadavg()[0]
            time.sleep(max(0.0, stop_at - time.time()))
            cpu, load_end = tree_cpu_seconds(server.proc.pid) - cpu_start, os.getloadavg()[0]
            busy = tree_memory_kb(server.proc.pid)
            results = [out.get(timeout=stop_at - time.time() + 4 * REPLY_TIMEOUT_S + 60) for _ in procs]
            probe_thread.join()
            memory = memory_kb(server.proc.pid)
            restarts = sum(r["restarts"] for r in wait_for_tuner_processes(server.endpoint))
            for p in procs:
                p.join(10)
        finally:
            server.close()
    latencies = [lat for samples, _ in results for _, lat in samples]
    reports = [lat for samples, _ in results for kind, lat in samples if kind == "report"]
    errors = sum(stats.get("errors", 0) for _, stats in results)
    timeouts = sum(stats.get("timeouts", 0) for _, stats in results)
    first_error = next((stats["first_error"] for _, stats in results if "first_error" in stats), None)
    ms = 1000.0
    return {
        "jobs": n, "seconds": seconds, "step_ms": step_ms, "requests": len(latencies), "reports": len(reports),
        "replies_per_s": len(latencies) / seconds,
        "median_ms": statistics.median(latencies) * ms if latencies else float("nan"),
        "p99_ms": percentile(latencies, 99) * ms, "max_ms": max(latencies, default=float("nan")) * ms,
        "ping_median_ms": statistics.median(pings) * ms if pings else float("nan"),
        "ping_p99_ms": percentile(pings, 99) * ms,
        "server_cpu_pct": 100 * cpu / seconds, "server_rss_mb": memory["VmRSS"] / 1024, "server_peak_mb": memory["VmHWM"] / 1024,
        "tuner_processes": tuner_processes, "tuner_process_restarts": restarts,
        "tree_rss_mb": busy["rss"] / 1024, "tree_pss_mb": busy["pss"] / 1024, "tree_idle_pss_mb": idle["pss"] / 1024,
        "kb_per_job": (busy["pss"] - idle["pss"]) / n,
        "load_average_start": load_start, "load_average_end": load_end, "errors": errors, "first_error": first_error, "timeouts": timeouts,
    }


def tuner_compute(reports: int = 66) -> dict:
    """Milliseconds of ``tell`` + ``ask`` per report of one AutoLRS job (six stages by default)."""
    tuner = make_tuner("autolrs", {**JOB_CONFIG, "initial_lr": 0.1}, 0)
    sim = SimulatedClient(seed=0)
    times = []
    for _ in range(reports):
        obs = sim.execute(tuner.ask())
        if obs is None:
            break
        t0 = time.perf_counter()
        tuner.tell(obs)
        tuner.ask()
        times.append((time.perf_counter() - t0) * 1000)
    return {"reports": len(times), "mean_ms": statistics.fmean(times), "median_ms": statistics.median(times),
            "p99_ms": percentile(times, 99), "max_ms": max(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--seconds", type=float, default=20.0, help="measurement window per N")
    p.add_argument("--step-ms", type=float, default=100.0,
                   help="simulated time of one training step (a trial is 100 steps)")
    p.add_argument("--processes", type=int, default=4, help="client processes the jobs are spread over")
    p.add_argument("--workers", type=int, default=None, help="server worker threads (default: the config's)")
    p.add_argument("--server-processes", default=None,
                   help="the server's tuner processes: auto, a number, 0 = in the server process (default: the config's)")
    p.add_argument("--out", default="bench/out/server_load.json")
    args = p.parse_args()
    server_args = ["--config", _server_config(args.workers, max(args.jobs))]
    if args.server_processes is not None:
        server_args += ["--processes", str(args.server_processes)]

    compute = tuner_compute()
    print(f"AutoLRS tuner alone (tell + ask, {compute['reports']} reports): mean {compute['mean_ms']:.1f} ms "
          f"(the CPU a report costs), median {compute['median_ms']:.1f} ms, "
          f"p99 {compute['p99_ms']:.1f} ms, max {compute['max_ms']:.1f} ms", flush=True)
    rows = []
    print(f"{'jobs':>5} {'requests':>9} {'replies/s':>10} {'median ms':>10} {'p99 ms':>8} {'max ms':>8} "
          f"{'ping p50':>9} {'ping p99':>9} {'CPU %':>6} {'RSS MB':>7} {'PSS MB':>7} {'KB/job':>7} {'procs':>5} "
          f"{'load':>9} {'errors':>7}", flush=True)
    for n in args.jobs:
        r = measure(n, args.seconds, args.step_ms, args.processes, server_args)
        rows.append(r)
        print(f"{r['jobs']:>5} {r['requests']:>9} {r['replies_per_s']:>10.1f} {r['median_ms']:>10.2f} "
              f"{r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} {r['ping_median_ms']:>9.2f} {r['ping_p99_ms']:>9.1f} "
              f"{r['server_cpu_pct']:>6.0f} {r['tree_rss_mb']:>7.1f} {r['tree_pss_mb']:>7.1f} {r['kb_per_job']:>7.0f} "
              f"{r['tuner_processes']:>5} {r['load_average_start']:>4.1f}-{r['load_average_end']:<4.1f} "
              f"{r['errors'] + r['timeouts']:>7}", flush=True)
    top = max(rows, key=lambda r: r["jobs"])
    # A refused or failed request is no latency figure: a run with errors meets nothing.
    clean = top["errors"] == 0
    verdict = "meets" if clean and top["p99_ms"] < TARGET_P99_MS else "misses"
    ping_verdict = "meets" if clean and top["ping_p99_ms"] < TARGET_PING_P99_MS else "misses"
    if not clean:
        print(f"{top['errors']} requests at {top['jobs']} jobs were answered with an error (the first: "
              f"{top['first_error']}): the figures do not count", flush=True)
    print(f"p99 at {top['jobs']} jobs: {top['p99_ms']:.1f} ms ({verdict} the target of < {TARGET_P99_MS:g} ms); "
          f"ping p99 {top['ping_p99_ms']:.1f} ms ({ping_verdict} the target of < {TARGET_PING_P99_MS:g} ms); "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    report = {"benchmark": "server_load", "job_config": JOB_CONFIG, "step_ms": args.step_ms,
              "target_p99_ms": TARGET_P99_MS, "target_ping_p99_ms": TARGET_PING_P99_MS, "cores": os.cpu_count(),
              "tuner_compute": compute, "load_average": os.getloadavg(), "rows": rows}
    write_report(args.out, report)


def _server_config(workers: int | None, jobs: int) -> str:
    """A config file: room for ``jobs`` live sessions, all from this machine's address (the
    defaults allow 1,000, and 250 from one address), ``workers``."""
    settings = {"max_sessions": max(1000, jobs), "max_sessions_per_peer": max(250, jobs)}
    if workers is not None:
        settings["workers"] = workers
    path = Path(tempfile.mkdtemp(prefix="autolrs-load-cfg-")) / "server.yaml"
    path.write_text("server: {" + ", ".join(f"{k}: {v}" for k, v in settings.items()) + "}\n")
    return str(path)


if __name__ == "__main__":
    main()
