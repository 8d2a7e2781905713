"""Vehicle signals: raw CAN frames decoded with cantools from a DBC into ``vehicle.signals``.

A :class:`SignalDecoder` is told which signals to keep and at what rate:
``{"WHEEL_SPEEDS": 0, "STEER_ANGLE_SENSOR.STEER_ANGLE": 10}`` keeps every
signal of WHEEL_SPEEDS at every frame and STEER_ANGLE at most 10 times a
second. Nothing is dropped for being a checksum or a counter: those signals
(``CHECKSUM``, ``COUNTER``) are what the server's online checks look at.

Frames whose id the DBC does not describe are counted, not errors; a frame
that cantools cannot decode is counted under its message name in
``stats.decode_errors``. Real ECUs often send fewer bytes than the DBC
says (the RAV4 log has nine such messages): by default such a frame still
gives every signal that lies wholly inside it (``stats.short_frames`` counts
them); with ``allow_truncated=False`` it is a decode error.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cantools
from cantools.database.can import Database

from firmware_bridges.errors import ConfigError
from wire.schemas.can_frames import ERROR, EXTENDED, REMOTE, CanFrame
from wire.schemas.records import Signal

log = logging.getLogger(__name__)

#: Largest DBC file :func:`load_dbc` reads (the biggest opendbc files are about 1 MB).
MAX_DBC_BYTES = 8 * 1024 * 1024
_EXT_KEY = 1 << 31


def loads_dbc(text: str, *, strict: bool = False, source: str = "<string>") -> Database:
    """Parse DBC text. ``strict`` rejects overlapping signals (opendbc's files have some)."""
    try:
        db = cantools.database.load_string(text, database_format="dbc", strict=strict)
    except (cantools.database.UnsupportedDatabaseFormatError, cantools.database.Error) as exc:
        raise ConfigError(f"{source} is not a valid DBC: {exc}") from exc
    if not isinstance(db, Database) or not db.messages:
        raise ConfigError(f"{source} is not a valid DBC: it describes no CAN messages")
    return db


def load_dbc(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_DBC_BYTES, strict: bool = False
) -> Database:
    """Read a DBC file of at most ``max_bytes``; any problem is a :class:`ConfigError`."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read DBC file {p}: {exc.strerror or exc}") from exc
    if len(raw) > max_bytes:
        raise ConfigError(f"DBC file {p} is larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")  # what Vector's tools write
    return loads_dbc(text, strict=strict, source=str(p))


def toyota_checksum(arbitration_id: int, data: bytes) -> int:
    """Toyota's CAN checksum: id bytes + length + data bytes but the last, modulo 256.

    It sits in the last byte of the message, so a frame is intact when
    ``toyota_checksum(id, data) == data[-1]``.
    """
    s = (arbitration_id & 0xFF) + ((arbitration_id >> 8) & 0xFF) + len(data)
    return (s + sum(data[:-1])) & 0xFF


@dataclass(slots=True)
class SignalStats:
    """What a :class:`SignalDecoder` saw. ``decode_errors`` is per message name."""

    frames: int = 0
    decoded: int = 0
    signals: int = 0
    unknown_id: int = 0
    not_selected: int = 0
    other_channel: int = 0
    not_data: int = 0
    short_frames: int = 0
    decode_errors: dict[str, int] = field(default_factory=dict)


class _Output:
    """One selected signal of one message and when it may next be emitted."""

    __slots__ = ("interval_ns", "name", "next_ns", "signal")

    def __init__(self, message: str, signal: str, rate_hz: float) -> None:
        self.name = f"{message}.{signal}"
        self.signal = signal
        self.interval_ns = 0 if rate_hz == 0 else round(1e9 / rate_hz)
        self.next_ns: int | None = None


class _Plan:
    __slots__ = ("length", "message", "name", "outputs", "throttled")

    def __init__(self, message: cantools.database.can.Message, outputs: list[_Output]) -> None:
        self.message = message
        self.name: str = message.name
        self.length: int = message.length
        self.outputs = outputs
        self.throttled = any(o.interval_ns for o in outputs)


class SignalDecoder:
    """Decodes chosen signals of chosen messages, each at most at its chosen rate.

    ``signals`` maps ``"MESSAGE.SIGNAL"`` or ``"MESSAGE"`` (all its signals)
    to the highest output rate in Hz; 0 means every frame. ``None`` keeps
    every signal of every message at every frame. ``channels``, if given,
    limits decoding to frames from those buses (a DBC describes one bus).
    A rate limit keeps the long-run rate: a 100 Hz message at 10 Hz gives
    every tenth frame, even with jitter; a time step back restarts it.
    """

    def __init__(
        self,
        db: Database,
        signals: Mapping[str, float] | None = None,
        *,
        channels: Collection[str] | None = None,
        allow_truncated: bool = True,
    ) -> None:
        self.db = db
        self._allow_truncated = allow_truncated
        self.stats = SignalStats()
        self._channels = frozenset(channels) if channels is not None else None
        self._known: set[int] = {_key(m.frame_id, m.is_extended_frame) for m in db.messages}
        self._plans: dict[int, _Plan] = {}
        if signals is None:
            for m in db.messages:
                outs = [_Output(m.name, s.name, 0.0) for s in m.signals]
                self._plans[_key(m.frame_id, m.is_extended_frame)] = _Plan(m, outs)
            return
        chosen: dict[str, dict[str, float]] = {}
        whole: dict[str, float] = {}
        for key, rate in signals.items():
            if not isinstance(rate, (int, float)) or math.isnan(rate) or math.isinf(rate) or rate < 0:
                raise ConfigError(f"signal {key!r}: rate must be a finite number of Hz >= 0, not {rate!r}")
            msg_name, dot, sig_name = key.partition(".")
            msg = _message(db, msg_name, key)
            if dot:
                if sig_name not in {s.name for s in msg.signals}:
                    raise ConfigError(f"signal {key!r}: message {msg_name} has no signal {sig_name!r}")
                chosen.setdefault(msg_name, {})[sig_name] = float(rate)
            else:
                whole[msg_name] = float(rate)
        for msg_name in chosen.keys() | whole.keys():
            msg = db.get_message_by_name(msg_name)
            rates = {s.name: whole[msg_name] for s in msg.signals} if msg_name in whole else {}
            rates.update(chosen.get(msg_name, {}))  # a named signal overrides its message's rate
            outs = [_Output(msg_name, s.name, rates[s.name]) for s in msg.signals if s.name in rates]
            self._plans[_key(msg.frame_id, msg.is_extended_frame)] = _Plan(msg, outs)

    @property
    def outputs(self) -> list[str]:
        """Every output signal name, ``MESSAGE.SIGNAL``."""
        return [o.name for p in self._plans.values() for o in p.outputs]

    def decode(self, frame: CanFrame) -> list[Signal]:
        stats = self.stats
        stats.frames += 1
        if self._channels is not None and frame.channel not in self._channels:
            stats.other_channel += 1
            return []
        if frame.flags & (REMOTE | ERROR):
            stats.not_data += 1
            return []
        key = _key(frame.arbitration_id, bool(frame.flags & EXTENDED))
        plan = self._plans.get(key)
        if plan is None:
            if key in self._known:
                stats.not_selected += 1
            else:
                stats.unknown_id += 1
            return []
        ts = frame.timestamp_ns
        outputs = plan.outputs
        if plan.throttled:
            outputs = [o for o in outputs if _due(o, ts)]
            if not outputs:
                return []
        data = frame.data
        if len(data) < plan.length:
            stats.short_frames += 1
        try:
            values = plan.message.decode(
                data, decode_choices=False, scaling=True, allow_truncated=self._allow_truncated
            )
        except (cantools.database.Error, ValueError, TypeError, IndexError, KeyError) as exc:
            errors = stats.decode_errors
            n = errors.get(plan.name, 0)
            errors[plan.name] = n + 1
            if n == 0:
                log.warning("cannot decode %s (id 0x%X): %s", plan.name, frame.arbitration_id, exc)
            return []
        stats.decoded += 1
        out: list[Signal] = []
        for o in outputs:
            v = values.get(o.signal)  # type: ignore[union-attr]
            if v is None:
                continue  # a multiplexed signal not present in this frame
            if o.interval_ns:
                _advance(o, ts)
            out.append(Signal(ts, o.name, float(v)))  # type: ignore[arg-type]
        stats.signals += len(out)
        return out


def _key(frame_id: int, extended: bool) -> int:
    return frame_id | _EXT_KEY if extended else frame_id


def _message(db: Database, name: str, key: str) -> cantools.database.can.Message:
    try:
        return db.get_message_by_name(name)
    except KeyError:
        raise ConfigError(f"signal {key!r}: the DBC has no message {name!r}") from None


def _due(o: _Output, ts: int) -> bool:
    nxt = o.next_ns
    # Due at or after its slot, or after a step back in time of more than one interval.
    return nxt is None or ts >= nxt or ts < nxt - 2 * o.interval_ns


def _advance(o: _Output, ts: int) -> None:
    nxt = o.next_ns
    if nxt is None or ts >= nxt + o.interval_ns or ts < nxt - 2 * o.interval_ns:
        o.next_ns = ts + o.interval_ns  # first sample, a gap, or a step back: restart
    else:
        o.next_ns = nxt + o.interval_ns
