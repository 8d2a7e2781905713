"""warning/1: round trips, limits and clear errors for every malformed field."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.codec import pack
from wire.errors import DecodeError, LimitError, SchemaError, ValidationError
from wire.warning import HazardWarning, Severity, Status, WarningType


def make(**kw: object) -> HazardWarning:
    base: dict[str, object] = dict(
        type=WarningType.FCW, severity=Severity.WARNING, target="car-1", counterparts=("car-2",),
        lat=37.7749, lon=-122.4194, issued_ns=1_700_000_000_000_000_000,
        expires_ns=1_700_000_001_000_000_000, episode=42, update=3, status=Status.UPDATE,
        ttc_s=2.4, time_diff_s=None, source_ns=1_699_999_999_990_000_000,
    )
    base.update(kw)
    return HazardWarning(**base)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    wtype=st.sampled_from(list(WarningType)),
    sev=st.sampled_from(list(Severity)),
    status=st.sampled_from(list(Status)),
    cps=st.lists(st.from_regex(r"[A-Za-z0-9_#-]{1,40}", fullmatch=True), min_size=1, max_size=16),
    lat=st.floats(-90, 90), lon=st.floats(-180, 180),
    t=st.integers(0, 2**62), life=st.integers(0, 10**10),
    ttc=st.none() | st.floats(0, 1e6), dt=st.none() | st.floats(0, 1e6),
    ep=st.integers(0, 2**63 - 1), upd=st.integers(0, 2**32 - 1),
)
def test_round_trip(wtype, sev, status, cps, lat, lon, t, life, ttc, dt, ep, upd) -> None:  # type: ignore[no-untyped-def]
    w = HazardWarning(wtype, sev, "veh_7", tuple(cps), lat, lon, t, t + life, ep, upd, status,
                      ttc, dt, t)
    data = w.encode()
    assert len(data) < 1024
    assert HazardWarning.decode(data) == w


def test_expired() -> None:
    w = make()
    assert not w.expired(w.expires_ns)
    assert w.expired(w.expires_ns + 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target": "a/b"}, "target"),
        ({"counterparts": ()}, "counterparts"),
        ({"counterparts": ("x" * 161,)}, "counterpart"),
        ({"lat": 91.0}, "latitude"),
        ({"lon": math.nan}, "longitude"),
        ({"ttc_s": -1.0}, "ttc_s"),
        ({"time_diff_s": math.inf}, "time_diff_s"),
        ({"expires_ns": 1}, "expires before"),
        ({"episode": -1}, "episode"),
    ],
)
def test_invalid_warnings_are_refused_when_built(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make(**change)


def _raw(**kw: object) -> dict[str, object]:
    obj = msgpack.unpackb(make().encode())
    obj.update(kw)
    return obj


@pytest.mark.parametrize(
    ("obj", "error", "message"),
    [
        (_raw(v=2), SchemaError, "version 2"),
        (_raw(type="XYZ"), DecodeError, "XYZ"),
        (_raw(sev=9), DecodeError, "9"),
        (_raw(st="gone"), DecodeError, "gone"),
        (_raw(tgt=5), DecodeError, "'tgt' must be str"),
        (_raw(cp=[1, 2]), DecodeError, "counterparts"),
        (_raw(cp=[]), DecodeError, "counterparts"),
        (_raw(lat="north"), DecodeError, "'lat' must be a number"),
        (_raw(lat=200.0), DecodeError, "latitude"),
        (_raw(t=True), DecodeError, "'t' must be int"),
        (_raw(ttc=-3.0), DecodeError, "ttc_s"),
        ({k: v for k, v in _raw().items() if k != "ep"}, DecodeError, "lacks 'ep'"),
        ([1, 2, 3], DecodeError, "not a map"),
    ],
)
def test_malformed_warnings_name_what_is_wrong(obj: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        HazardWarning.decode(pack(obj))


def test_limits_bound_the_decoder() -> None:
    with pytest.raises(LimitError):
        HazardWarning.decode(b"\x00" * 5000)
    with pytest.raises(LimitError):
        HazardWarning.decode(pack(_raw(cp=["a"] * 17)))
    with pytest.raises(LimitError):
        HazardWarning.decode(pack(_raw(junk="x" * 300)))
    with pytest.raises(DecodeError):
        HazardWarning.decode(make().encode()[:-3])
    with pytest.raises(DecodeError):
        HazardWarning.decode(make().encode() + b"\x00")


def test_unknown_keys_are_ignored() -> None:
    assert HazardWarning.decode(pack(_raw(extra=1))) == make()
