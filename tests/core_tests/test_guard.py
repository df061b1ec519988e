"""The divergence guard on scripted loss series: segments, snapshots, rollbacks, LR cuts, giving
up, searches left alone, and the rules of autolrs.divergence it judges with."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autolrs import actions, divergence
from autolrs.wire import protocol
from autolrs.actions import Observation
from autolrs.testing import QuadraticBowl, SimulatedClient
from autolrs.tuners import ConfigError, make_tuner
from autolrs.tuners.base import Tuner
from autolrs.tuners.guard import SLOT, Guarded

JOB = {"initial_lr": 0.1, "max_steps": 100, "has_val_fn": True}


class ScriptedClient:
    """Carries out plans the way the callback does; the loss of global step ``s`` (1-based) is
    ``loss(s)``, so a series is scripted by step. Remembers the step each slot was saved at and
    every restore as ``(step, step the slot was saved at)``."""

    def __init__(self, loss, lr: float = 0.1):
        self.loss, self.lr, self.step = loss, lr, 0
        self.saved: dict[str, int] = {}
        self.restores: list[tuple[int, int]] = []
        self.plans: list[list[dict]] = []
        self.lrs: list[float] = []  # the LR of every step
        self.stopped: str | None = None

    def execute(self, plan: list[dict]) -> Observation | None:
        actions.validate_plan(plan)
        self.plans.append(plan)
        evals: list[tuple[int, float]] = []
        for a in plan:
            op = a["op"]
            if op == "set_lr":
                self.lr = a["lr"]
            elif op == "checkpoint":
                self.saved[a["slot"]] = self.step
            elif op == "discard":
                self.saved.pop(a["slot"], None)
            elif op == "restore":
                self.restores.append((self.step, self.saved[a["slot"]]))
            elif op == "evaluate":
                evals.append((0, float(self.step)))
            elif op == "stop":
                self.stopped = a["reason"]
                return None
            elif op == "run":
                losses = []
                for i in range(a["steps"]):
                    if a.get("lrs"):
                        self.lr = a["lrs"][i]
                    self.lrs.append(self.lr)
                    self.step += 1
                    losses.append(self.loss(self.step))
                    if a["eval_every"] and (i + 1) % a["eval_every"] == 0:
                        evals.append((i + 1, float(self.step)))  # the value says where it was taken
                return Observation(step=self.step, steps=a["steps"], losses=losses, evals=evals)
        raise AssertionError("a plan ends with run or stop")

    def drive(self, tuner, max_reports: int = 1000) -> "ScriptedClient":
        for _ in range(max_reports):
            obs = self.execute(tuner.ask())
            if obs is None:
                break
            tuner.tell(Observation.from_body(protocol.loads(protocol.dumps(obs.to_body()))))  # as on the wire
        return self


def healthy(step: int) -> float:
    """A falling loss with a little deterministic noise."""
    return 2.0 * math.exp(-step / 20) + 0.3 + 0.02 * math.sin(step * 1.7)


def with_spike(steps: range, value: float = 50.0):
    return lambda s: value if s in steps else healthy(s)


def guarded(name="constant", **config):
    return make_tuner(name, {"chunk": 50, "guard_every": 10, **JOB, **config}, seed=0)


def events(tuner, kind="rollback"):
    return [e for e in tuner.summary()["guard"]["events"] if e["action"] == kind]


# --- rollback ---------------------------------------------------------------------------------


def test_a_spike_gives_exactly_one_rollback_to_the_snapshot_before_it_at_half_the_lr():
    tuner = guarded()
    client = ScriptedClient(with_spike(range(36, 41))).drive(tuner)  # the last 5 steps of segment 31-40
    assert client.stopped == "max_steps" and client.step == 100
    rollbacks = events(tuner)
    assert len(rollbacks) == 1
    e = rollbacks[0]
    assert (e["step"], e["to_step"], e["steps_back"]) == (40, 30, 10)
    assert e["lr_before"] == pytest.approx(0.1) and e["lr_after"] == pytest.approx(0.05)
    assert "rose to 50" in e["reason"]
    # The client restored the snapshot saved at step 30, once, right after step 40 ...
    assert client.restores == [(40, 30)]
    # ... and trained every later step at half the LR (the schedule scales what remains).
    assert client.lrs[:40] == [0.1] * 40 and client.lrs[40:] == [pytest.approx(0.05)] * 60
    assert tuner.inner.scale == 0.5
    s = tuner.summary()["guard"]
    assert s["rollbacks"] == 1 and s["strikes"] == 0 and s["steps_rolled_back"] == 10 and s["stopped"] is None


def test_the_rollback_plan_restores_then_sets_the_cut_lr():
    tuner = guarded()
    client = ScriptedClient(with_spike(range(36, 41)))
    for _ in range(4):
        tuner.tell(client.execute(tuner.ask()))
    plan = tuner.ask()
    assert [a["op"] for a in plan] == ["restore", "set_lr", "run"] and plan[0]["slot"] == SLOT
    assert plan[1]["lr"] == pytest.approx(0.05) and plan[2]["lrs"] == [pytest.approx(0.05)] * 10
    assert plan[2]["start_step"] == 40
    assert tuner.summary()["guard"]["action"]["action"] == "rollback"  # this decision's log line says so


def test_snapshots_every_guard_every_healthy_steps_with_one_copy_at_a_time():
    tuner = guarded()
    client = ScriptedClient(healthy).drive(tuner)
    saves = [i for i, p in enumerate(client.plans) if actions.checkpoint(SLOT) in p]
    assert len(saves) == 10  # at steps 0, 10, ..., 90
    for i in saves:  # the old copy is dropped before the new one is made
        ops = [(a["op"], a.get("slot")) for a in client.plans[i]]
        assert ops[ops.index(("checkpoint", SLOT)) - 1] == ("discard", SLOT)
    assert client.plans[-1][-2:] == [actions.discard(SLOT), actions.stop("max_steps")]
    assert events(tuner) == [] and client.lrs == [0.1] * 100
    assert all(p[-1]["op"] != "run" or p[-1]["steps"] == 10 for p in client.plans)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_rolls_back(bad):
    tuner = guarded()
    client = ScriptedClient(lambda s: bad if s == 25 else healthy(s)).drive(tuner)
    rollbacks = events(tuner)
    assert len(rollbacks) == 1 and "non-finite" in rollbacks[0]["reason"]
    assert client.restores == [(30, 20)]
    assert client.step == 100 and client.lrs[30:] == [pytest.approx(0.05)] * 70


def test_two_bad_batches_are_no_spike_but_the_segment_is_not_saved():
    tuner = guarded()
    client = ScriptedClient(with_spike(range(33, 35))).drive(tuner)  # two bad batches mid-segment
    assert events(tuner) == [] and [e["step"] for e in events(tuner, "suspect")] == [40]
    saved_at = [p[-1]["start_step"] for p in client.plans if actions.checkpoint(SLOT) in p]
    assert 40 not in saved_at and 50 in saved_at  # the next healthy segment is saved
    assert client.lrs == [0.1] * 100


def test_a_spike_across_two_segments_is_seen_and_undoes_both():
    # Steps 39-41: two bad losses at the end of one segment, one at the start of the next.
    tuner = guarded()
    client = ScriptedClient(with_spike(range(39, 42))).drive(tuner)
    assert [e["step"] for e in events(tuner, "suspect")] == [40]
    (e,) = events(tuner)
    assert (e["step"], e["to_step"], e["steps_back"]) == (50, 30, 20) and "spike" in e["reason"]
    assert client.restores == [(50, 30)]


def test_the_snapshot_is_never_taken_after_a_segment_with_a_bad_loss():
    # A lasting blow-up starting at the last step of a segment: its one bad loss keeps the
    # snapshot at the step before, and the rollback goes there.
    tuner = guarded()
    client = ScriptedClient(lambda s: 50.0 if s >= 40 else healthy(s)).drive(tuner, max_reports=6)
    assert client.restores == [(50, 30)]


def test_until_the_loss_falls_the_snapshot_stays_the_start_one():
    # A loss that hardly falls (a network a too large LR killed at once looks like this) is
    # never saved as good: a rollback goes back to where the run began.
    flat = lambda s: 2.3 + 0.02 * math.sin(s * 1.7)  # noqa: E731
    tuner = guarded()
    client = ScriptedClient(lambda s: math.nan if s == 75 else flat(s)).drive(tuner, max_reports=9)
    assert client.restores == [(80, 0)]
    assert tuner.summary()["guard"]["under_way"] is False
    # A falling loss is under way after its first window: snapshots from then on.
    tuner = guarded()
    client = ScriptedClient(healthy).drive(tuner, max_reports=3)
    assert tuner.summary()["guard"]["under_way"] is True and client.saved[SLOT] == 20


def test_early_a_climb_above_the_start_level_is_a_spike():
    # Before the loss has fallen, 3 of 5 losses 25% above its start are divergence; later the
    # spike threshold is twice the level (and half the progress) above it.
    climb = [2.3, 2.3, 2.3, 3.1, 3.0, 3.2, 2.4, 2.35] + [2.3] * 12
    assert divergence.judge_segment(climb, ref=2.3, start=2.3, early=True).kind == "diverged"
    assert divergence.judge_segment(climb, ref=2.3, start=2.3, early=False).kind == "ok"
    # ... beyond the noise, which before any healthy window is the segment's second half's: a
    # job that starts from trained weights, whose batch losses vary by a third, is not a spike.
    trained = list(0.047 * (1 + 0.3 * np.random.default_rng(1).standard_normal(20)))
    assert divergence.judge_segment(trained, ref=trained[0], start=trained[0], early=True).kind != "diverged"


def test_repeated_divergence_backs_off_then_stops_with_the_last_good_weights():
    tuner = guarded(guard_max=3)
    client = ScriptedClient(lambda s: math.nan if s > 20 else healthy(s)).drive(tuner)
    rollbacks = events(tuner)
    assert [e["lr_after"] for e in rollbacks] == pytest.approx([0.05, 0.025, 0.0125])
    assert [e["strike"] for e in rollbacks] == [1, 2, 3]
    assert all(e["to_step"] == 20 for e in rollbacks)
    assert client.plans[-1][:2] == [actions.restore(SLOT), actions.discard(SLOT)]
    assert client.stopped.startswith("guard: diverged after 3 rollback(s)")
    s = tuner.summary()
    assert s["stop_reason"].startswith("guard: diverged") and s["guard"]["stopped"]
    assert tuner.ask() == client.plans[-1]  # it stays stopped


def test_a_healthy_window_between_two_spikes_resets_the_count():
    tuner = guarded(guard_max=1)
    spikes = set(range(26, 31)) | set(range(66, 71))
    client = ScriptedClient(lambda s: 50.0 if s in spikes else healthy(s)).drive(tuner)
    assert [e["strike"] for e in events(tuner)] == [1, 1]
    assert client.stopped == "max_steps"
    assert client.lrs[-1] == pytest.approx(0.025)  # both cuts stay


def test_guard_max_zero_stops_at_the_first_divergence():
    tuner = guarded(guard_max=0)
    client = ScriptedClient(lambda s: math.nan if s == 15 else healthy(s)).drive(tuner)
    assert events(tuner) == [] and len(events(tuner, "stop")) == 1
    assert client.restores == [(20, 10)] and client.step == 20


# --- splitting and merging --------------------------------------------------------------------


class Recorder(Tuner):
    """Asks for one run of 50 steps with evaluations every 20 (collecting what ``collect`` says)
    at LR 0.2, then stops; keeps every observation and rollback it is told."""

    name = "recorder"
    defaults = {"collect": ["loss"]}

    def __init__(self, config=None, seed=0):
        super().__init__(config, seed)
        self.seen: list[Observation] = []
        self.rollbacks: list[tuple[float, dict]] = []

    def ask(self):
        if self.seen:
            return [actions.stop("done")]
        return [actions.set_lr(0.2), actions.evaluate(),
                actions.run(50, 0, eval_every=20, collect=tuple(self.config["collect"]))]

    def tell(self, observation):
        self.seen.append(observation)

    def on_rollback(self, factor, info):
        self.rollbacks.append((factor, dict(info)))

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def lr_bounds(self):
        return (0.2, 0.2)


def test_a_long_run_is_split_with_evaluations_in_place_and_told_back_as_one():
    inner = Recorder()
    tuner = Guarded(inner, every=16)
    client = ScriptedClient(healthy).drive(tuner)
    runs = [p[-1] for p in client.plans if p[-1]["op"] == "run"]
    assert [r["steps"] for r in runs] == [16, 4, 16, 4, 10]  # each segment ends at an evaluation it cannot hold
    assert [r["start_step"] for r in runs] == [0, 16, 20, 36, 40]
    assert [a["op"] for a in client.plans[0]] == ["set_lr", "evaluate", "discard", "checkpoint", "run"]
    (obs,) = inner.seen
    assert obs.step == 50 and obs.steps == 50
    assert obs.losses == [healthy(s) for s in range(1, 51)]
    assert obs.evals == [(0, 0.0), (20, 20.0), (40, 40.0)]  # taken at the steps the inner run asked for


def test_undone_segments_are_not_told_and_the_run_goes_on_cut():
    inner = Recorder()
    tuner = Guarded(inner, every=10)
    client = ScriptedClient(lambda s: math.nan if s == 25 else healthy(s)).drive(tuner)
    (obs,) = inner.seen
    assert obs.step == 50 and obs.steps == 50
    assert len(obs.losses) == 40 and all(math.isfinite(x) for x in obs.losses)  # steps 21-30 undone
    assert obs.losses[20:] == [healthy(s) for s in range(31, 51)]
    assert obs.evals == [(0, 0.0), (20, 20.0), (40, 40.0)]  # the one at 20 is the snapshot's own point
    (factor, info), = inner.rollbacks
    assert factor == 0.5 and info["lr_before"] == pytest.approx(0.2) and info["to_step"] == 20
    assert client.lrs[30:] == [pytest.approx(0.1)] * 20  # the run in flight sets no LR: the guard sets it


def test_a_run_that_collects_no_losses_is_still_watched_but_told_without_them():
    inner = Recorder({"collect": []})
    tuner = Guarded(inner, every=10)
    client = ScriptedClient(healthy).drive(tuner)
    assert all("loss" in p[-1]["collect"] for p in client.plans if p[-1]["op"] == "run")
    assert inner.seen[0].losses == []


# --- searches, resumes, hooks -----------------------------------------------------------------


@pytest.mark.parametrize("name, config", [
    ("range_test", {"start_lr": 1e-4, "end_lr": 10.0, "num_iter": 60, "chunk": 8}),
    ("loss_diff", {"lr_min": 1e-3, "lr_max": 2.0, "num_evals": 8, "num_subsamples": 6, "has_probe_fn": True}),
])
def test_a_tuner_that_only_searches_gets_exactly_its_own_plans(name, config):
    job = {**JOB, "max_steps": 600}
    on = SimulatedClient(QuadraticBowl(diverge_lr=0.5), seed=1).drive(make_tuner(name, {**config, **job}))
    off = SimulatedClient(QuadraticBowl(diverge_lr=0.5), seed=1).drive(make_tuner(name, {**config, **job,
                                                                                       "guard": False}))
    assert on.plans == off.plans


def test_autolrs_trials_are_left_alone_and_the_stage_run_is_guarded():
    config = {"tau": 40, "tau_max": 160, "k": 3, "min_lr": 0.001, "max_lr": 1.0, "guard_every": 16,
              "initial_lr": 0.1, "max_steps": 400}

    def drive(tuner):
        client, seen = SimulatedClient(seed=3), []
        for _ in range(200):
            searching, plan = tuner.in_search(), tuner.ask()
            seen.append((searching, plan))
            obs = client.execute(plan)
            if obs is None:
                break
            tuner.tell(obs)
        return seen

    guarded_plans = drive(make_tuner("autolrs", config, seed=3))
    plain = drive(make_tuner("autolrs", {**config, "guard": False}, seed=3))
    for searching, plan in guarded_plans:
        if searching:
            assert {a.get("slot") for a in plan if a["op"] in ("checkpoint", "restore")} - {"stage", "best"} == set()
        elif plan[-1]["op"] == "run":
            assert plan[-1]["steps"] <= 16
    # The searches are AutoLRS's own, save for dropping the guard's copy while they run.
    trials = [[a for a in p if a.get("slot") != SLOT] for s, p in guarded_plans if s]
    assert len(trials) == 9 and trials == [p for s, p in plain if s]
    assert any(actions.discard(SLOT) in p for s, p in guarded_plans if s)


def test_guard_state_resumes_exactly_in_the_middle_of_a_rollback():
    loss = with_spike(range(36, 41))
    reference = ScriptedClient(loss).drive(guarded())
    for split in (3, 4, 5, 7):
        tuner = guarded()
        client = ScriptedClient(loss).drive(tuner, max_reports=split)
        resumed = guarded()
        resumed.load_state_dict(protocol.loads(protocol.dumps(tuner.state_dict())))
        client.drive(resumed)
        assert client.plans == reference.plans
    state = tuner.state_dict()
    assert "guard" in state and state["step"] == tuner.inner.state_dict()["step"]  # the inner's keys stay on top


def test_a_state_saved_without_the_guard_loads_and_starts_watching():
    plain = make_tuner("constant", {"chunk": 50, **JOB, "guard": False})
    ScriptedClient(healthy).drive(plain, max_reports=1)
    tuner = guarded()
    tuner.load_state_dict(plain.state_dict())
    plan = tuner.ask()
    assert plan[-1]["start_step"] == 50 and actions.checkpoint(SLOT) in plan


def test_hypergradient_tuners_lower_their_lr_max_and_skip_the_hypergradient_across_the_rollback():
    tuner = make_tuner("hd", {**JOB, "every": 10, "beta": 0.0, "guard": False})
    tuner.on_rollback(0.5, {"lr_before": 0.1})
    assert tuner.lr == pytest.approx(0.05) and tuner.lr_max == pytest.approx(0.05)
    tuner.tell(Observation(step=10, steps=10, losses=[1.0] * 10, hypergrad={"h": [1e9] + [0.0] * 9}))
    assert tuner.summary()["skipped"] == 1 and tuner.lr == pytest.approx(0.05)
    resumed = make_tuner("hd", {**JOB, "every": 10, "beta": 0.0, "guard": False})
    resumed.load_state_dict(protocol.loads(protocol.dumps(tuner.state_dict())))
    assert resumed.lr_max == pytest.approx(0.05)


def test_autolrs_cuts_its_stage_lr_and_searches_below_the_lr_that_diverged():
    config = {"tau": 40, "tau_max": 160, "k": 3, "min_lr": 0.001, "max_lr": 1.0, "initial_lr": 0.1,
              "max_steps": 2000, "guard": False, "final_decay": "none"}
    tuner = make_tuner("autolrs", config, seed=0)
    client = SimulatedClient(seed=0)
    while tuner.phase != "exploit":
        tuner.tell(client.execute(tuner.ask()))
    machine = tuner.stage_machine()
    winner = machine.current.trials[machine.current.winner].lr
    tuner.on_rollback(0.5, {"lr_before": winner})
    plan = tuner.ask()
    assert [a["lr"] for a in plan if a["op"] == "set_lr"] == [pytest.approx(winner / 2)]
    lo, hi = tuner.interval
    assert hi == pytest.approx(winner / 2) and lo < hi
    # ... and the next stage's trials stay below it, also after a restart
    resumed = make_tuner("autolrs", config, seed=0)
    resumed.load_state_dict(protocol.loads(protocol.dumps(tuner.state_dict())))
    assert resumed.interval == tuner.interval
    while tuner.phase == "exploit":
        tuner.tell(client.execute(tuner.ask()))
    assert tuner.phase == "trial" and all(lr <= winner / 2 for lr in actions.plan_lrs(tuner.ask()))


def test_guard_knobs_are_checked_and_the_guard_can_be_off():
    for bad in ({"guard": "yes"}, {"guard_every": 0}, {"guard_factor": 1.0}, {"guard_factor": 0}, {"guard_max": -1}):
        with pytest.raises(ConfigError, match="guard"):
            make_tuner("constant", {**JOB, **bad})
    assert isinstance(make_tuner("cosine", JOB), Guarded)
    assert not isinstance(make_tuner("cosine", {**JOB, "guard": False}), Guarded)
    assert not isinstance(make_tuner("record", JOB), Guarded)  # never sends an LR unless asked to
    assert isinstance(make_tuner("record", {**JOB, "guard": True}), Guarded)


# --- the rules --------------------------------------------------------------------------------


def test_judge_a_rise_back_towards_the_start_is_divergence_a_warm_restart_is_not():
    rng = np.random.default_rng(0)
    noise = 0.02
    # The run fell from 2.3 to 0.1; a restart lifts it to 0.3: not divergence (25% of the progress is 0.55).
    restart = 0.3 + noise * rng.standard_normal(100)
    assert divergence.judge_segment(restart, ref=0.1, start=2.3, noise=noise).kind == "ok"
    back = 1.5 + noise * rng.standard_normal(100)
    verdict = divergence.judge_segment(back, ref=0.1, start=2.3, noise=noise)
    assert verdict.kind == "diverged" and verdict.reason.startswith("loss rose to 1.")
    # A spike: 3 of 5 losses in a row above the spike threshold (here 0.1 + 50% of 2.2), even if
    # the loss is back down by the end; one or two are only suspect.
    calm = list(0.12 + noise * rng.standard_normal(100))
    for bad, kind in (([3.0, 0.12, 3.0, 0.12, 3.0], "diverged"), ([3.0] * 2, "suspect"), ([3.0], "suspect")):
        y = calm[:50] + bad + calm[50:]
        assert divergence.judge_segment(y, ref=0.1, start=2.3, noise=noise).kind == kind, bad
    assert divergence.judge_segment(calm[:50] + [1.1] * 5 + calm[50:], ref=0.1, start=2.3, noise=noise).kind == "ok"
    # ... across the boundary with the previous segment
    assert divergence.judge_segment([3.0] + calm, ref=0.1, start=2.3, noise=noise, before=[0.1, 3.0, 3.0]).kind == \
        "diverged"


def test_judge_the_first_segment_against_its_own_start():
    exploding = np.geomspace(2.3, 500.0, 100)
    assert divergence.judge_segment(exploding, ref=None).kind == "diverged"
    falling = np.geomspace(2.3, 0.5, 100)
    assert divergence.judge_segment(falling, ref=None).kind == "ok"
    # Digits at 10x the LR (SGD momentum 0.9): it blows up within 15 steps and comes back to chance.
    digits = [2.28, 2.33, 2.28, 2.1, 1.79, 1.19, 7.02, 6.35, 2.39, 3.82, 12.1, 10.9, 2.25, 10.7, 2.25, 2.95, 32.9, 10.4]
    assert divergence.judge_segment(digits + [2.4] * 20, ref=None).kind == "diverged"
    assert divergence.start_level([0.818, 0.868, 33.9, 181.0]) == 0.818  # the first steps' level, not the blow-up
    assert divergence.judge_segment([2.3, math.nan], ref=None).kind == "diverged"
    assert divergence.judge_segment([], ref=0.1).kind == "ok"
