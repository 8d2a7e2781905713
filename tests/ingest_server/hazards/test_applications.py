"""Each application on its scenarios, run synchronously on simulated time (no broker).

The built-in scenarios carry their expectations: every expected warning
reaches the right vehicle in time, and anything else is spurious. The NHTSA
cases also assert the true range/range-rate TTC at which the warning was
issued.
"""

from __future__ import annotations

import math

import pytest

from cvis.simulate import scenario as scenarios
from cvis.simulate.report import Report
from cvis.simulate.run import run_sync
from cvis.simulate.world import World
from ingest_server.hazards.config import HazardConfig
from ingest_server.hazards.engine import HazardEngine
from wire.warning import Status, WarningType


def simulate(sc: scenarios.Scenario, vehicles: int | None = None, duration: float | None = None,
             config: HazardConfig | None = None) -> tuple[Report, HazardEngine]:
    engine = HazardEngine(config)
    return run_sync(World(sc, vehicles), engine, duration), engine


def new_warnings(report: Report) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(r.warning.type.value, r.warning.target, r.warning.counterparts)
            for r in report.received if r.warning.status is Status.NEW]


@pytest.mark.parametrize(
    ("name", "min_ttc"),
    [("nhtsa_stopped_lead", 2.1), ("nhtsa_braking_lead", 2.4), ("nhtsa_slower_lead", 2.0)],
)
def test_nhtsa_fcw_cases_warn_early_enough(name: str, min_ttc: float) -> None:
    report, _ = simulate(scenarios.load(name))
    assert new_warnings(report) == [("FCW", "sv", ("pov",))], report.as_dict()
    (outcome,) = report.outcomes
    assert outcome.status == "ok"
    assert outcome.true_ttc is not None and outcome.true_ttc >= min_ttc
    # The TTC the warning itself carries is the engine's estimate: at or below the default
    # threshold, and never optimistic by more than the 100 ms state period.
    assert outcome.first is not None and outcome.first.warning.ttc_s is not None
    assert outcome.first.warning.ttc_s <= HazardConfig().fcw.ttc_s
    if name != "nhtsa_braking_lead":  # no accelerations: both TTCs agree
        assert outcome.first.warning.ttc_s == pytest.approx(outcome.true_ttc, abs=0.15)


def test_nhtsa_case_fails_with_a_late_threshold() -> None:
    """The check has teeth: warning at TTC 1.9 s misses NHTSA's 2.1 s requirement."""
    late = HazardConfig.from_mapping({"fcw": {"ttc_s": 1.9, "ttc_accel_s": 1.9}})
    report, _ = simulate(scenarios.load("nhtsa_stopped_lead"), config=late)
    assert [o.status for o in report.outcomes] == ["late"]
    assert report.outcomes[0].true_ttc is not None and report.outcomes[0].true_ttc < 2.1
    assert not report.ok


def test_hard_brake_warns_followers_only() -> None:
    report, engine = simulate(scenarios.load("hard_brake"))
    assert report.ok, report.as_dict()
    warned = {t for _, t, _ in new_warnings(report)}
    assert warned == {"b", "c"}  # not d (ahead), e (next lane), f (out of range), g (oncoming)
    assert engine.stats.warnings["EBW:new"] == 3
    # One episode per (type, target, counterpart): updates, never a second "new".
    keys = new_warnings(report)
    assert len(keys) == len(set(keys))


def test_ebw_reaches_adjacent_lanes_only_when_configured() -> None:
    wide = HazardConfig.from_mapping({"ebw": {"lateral_m": 5.5}})
    report, _ = simulate(scenarios.load("hard_brake"), config=wide)
    assert ("EBW", "e", ("a",)) in new_warnings(report)


def test_intersection_warns_both_and_only_them() -> None:
    report, _ = simulate(scenarios.load("intersection"))
    assert report.ok, report.as_dict()
    assert sorted(new_warnings(report)) == [("ICW", "a", ("b",)), ("ICW", "b", ("a",))]
    first = report.outcomes[0].first
    assert first is not None and first.warning.time_diff_s is not None
    assert first.warning.time_diff_s < 0.5


def test_pedestrian_crossing_warns_the_car() -> None:
    report, engine = simulate(scenarios.load("pedestrian"))
    assert report.ok, report.as_dict()
    assert new_warnings(report) == [("VRUCW", "car", ("rsu1#1",))]
    assert engine.stats.object_lists == 90


def test_a_minute_of_ordinary_traffic_is_silent() -> None:
    sc = scenarios.load("background")
    report, engine = simulate(sc)
    assert sc.duration == 60.0
    assert engine.stats.states > 40_000 and engine.stats.object_lists == 600
    assert report.received == [], [r.warning for r in report.received[:5]]
    assert not engine.stats.dropped


def test_spurious_warnings_fail_the_run() -> None:
    """The hard-brake scenario without its expectations: all its warnings count as spurious."""
    sc = scenarios.load("hard_brake").model_copy(update={"expect": []})
    report, _ = simulate(sc)
    assert len(report.spurious) == 5 and not report.ok


CURVES = """
name = "curves"
duration = 10.0

# Road "bend": the ego is already in a right-hand bend; a car stands in its lane 140 m further
# round it, another one nearer in the next lane.
[[roads]]
id = "bend"
start = [0.0, 0.0]
heading = 90.0
segments = [{ line = 50.0 }, { arc = 400.0, radius = -120.0 }]
lanes = 2
two_way = false

[[vehicles]]
id = "ego1"
road = "bend"
s = 60.0
speed = 15.0
events = [{ at = 7.0, accel = -8.0 }]

[[vehicles]]
id = "stopped1"
road = "bend"
s = 200.0
speed = 0.0

[[vehicles]]
id = "beside1"
road = "bend"
lane = 2
s = 180.0
speed = 0.0

# Road "entry": the ego is still on the straight; its lead brakes to a stop 49 m into a
# right-hand bend, where a straight line from the ego passes 10 m beside it. Only the lead's
# path history shows it is in the ego's lane. A car stands nearer in the next lane.
[[roads]]
id = "entry"
start = [0.0, 1000.0]
heading = 90.0
segments = [{ line = 200.0 }, { arc = 300.0, radius = -120.0 }]
lanes = 2
two_way = false

[[vehicles]]
id = "ego2"
road = "entry"
s = 40.0
speed = 20.0
events = [{ at = 8.1, accel = -9.0 }]

[[vehicles]]
id = "lead2"
road = "entry"
s = 170.0
speed = 15.0
events = [{ at = 4.0, accel = -6.0 }]

[[vehicles]]
id = "beside2"
road = "entry"
lane = 2
s = 240.0
speed = 0.0

[[expect]]
type = "FCW"
target = "ego1"
counterpart = "stopped1"
before = 7.0
min_ttc = 2.0

[[expect]]
type = "FCW"
target = "ego2"
counterpart = "lead2"
before = 7.8      # the ego enters the bend at 8.0 s
min_ttc = 2.0
"""


def test_fcw_follows_curves() -> None:
    """In a bend the ego's predicted arc finds the car in its lane and skips the nearer one in
    the next lane; before a bend the lead's bent path history does."""
    report, _ = simulate(scenarios.loads(CURVES))
    assert report.ok, report.as_dict()
    assert sorted(new_warnings(report)) == [("FCW", "ego1", ("stopped1",)),
                                            ("FCW", "ego2", ("lead2",))]


def test_path_history_is_what_finds_the_lead_before_the_bend() -> None:
    no_trail = HazardConfig.from_mapping({"path": {"trail_min_turn_deg": 360.0}})
    report, _ = simulate(scenarios.loads(CURVES), config=no_trail)
    status = {o.expect.target: o.status for o in report.outcomes}
    assert status["ego1"] == "ok" and status["ego2"] != "ok"


def test_disabled_applications_stay_silent() -> None:
    off = HazardConfig.from_mapping({k: {"enabled": False} for k in ("fcw", "ebw", "icw", "vru")})
    for name in ("hard_brake", "intersection", "pedestrian"):
        report, _ = simulate(scenarios.load(name), config=off)
        assert report.received == []


def test_every_builtin_scenario_passes() -> None:
    for name in scenarios.builtin_names():
        if name == "background":
            continue  # its own test above
        report, _ = simulate(scenarios.load(name))
        assert report.ok, (name, report.as_dict())
        assert all(math.isfinite(r.sim_time) for r in report.received)
        assert {r.warning.type for r in report.received} <= set(WarningType)
