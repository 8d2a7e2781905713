"""One warning per episode: updates while it lasts, an end, a refractory period."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest_server.hazards.config import EpisodeConfig, HazardConfig
from ingest_server.hazards.episodes import EpisodeBook, Finding
from ingest_server.hazards.errors import HazardConfigError
from wire.warning import HazardWarning, Severity, Status, WarningType

MS = 1_000_000
T0 = 1_700_000_000_000_000_000


def finding(ttc: float = 2.5, sev: Severity = Severity.WARNING, cp: str = "lead") -> Finding:
    return Finding(WarningType.FCW, "ego", (cp,), sev, 37.77, -122.43, ttc_s=ttc, source_ns=T0)


def run(book: EpisodeBook, events: list[tuple[int, Finding | None]]) -> list[HazardWarning]:
    """Feed findings at times (ms); ``None`` means: just sweep."""
    out = []
    for t_ms, f in events:
        now = T0 + t_ms * MS
        if f is not None:
            w = book.confirm(f, now)
            if w is not None:
                out.append(w)
        out += book.sweep(now)
    return out


def test_one_warning_per_episode_with_updates_and_an_end() -> None:
    book = EpisodeBook(EpisodeConfig(), episode_prefix=7)
    # A steady finding every 100 ms for 2 s, then nothing.
    events = [(t, finding(2.5)) for t in range(0, 2000, 100)] + [(t, None) for t in range(2000, 3000, 50)]
    ws = run(book, events)
    assert [w.status for w in ws] == [Status.NEW] + [Status.UPDATE] * 3 + [Status.END]
    assert len({w.episode for w in ws}) == 1 and ws[0].episode >> 32 == 7
    assert [w.update for w in ws] == [0, 1, 2, 3, 4]
    # Updates every 500 ms keep the 1 s expiry from running out while it lasts.
    issued = [(w.issued_ns - T0) // MS for w in ws]
    assert issued[:4] == [0, 500, 1000, 1500]
    assert all(w.expires_ns - w.issued_ns == 1000 * MS for w in ws[:-1])
    assert ws[-1].expires_ns == ws[-1].issued_ns  # the end voids it at once
    assert 1900 + 350 <= issued[-1] <= 1900 + 400


def test_severity_or_ttc_changes_are_sent_at_once() -> None:
    book = EpisodeBook(EpisodeConfig())
    ws = run(book, [(0, finding(2.6)), (100, finding(2.5)), (200, finding(2.0)),
                    (300, finding(1.9, Severity.ALERT))])
    assert [(w.status, w.ttc_s) for w in ws] == [
        (Status.NEW, 2.6), (Status.UPDATE, 2.0), (Status.UPDATE, 1.9)]


def test_refractory_period_after_an_episode() -> None:
    cfg = EpisodeConfig(refractory_s=2.0, clear_after_s=0.35)
    book = EpisodeBook(cfg)
    ws = run(book, [(0, finding()), (100, finding()), (500, None)])
    assert [w.status for w in ws] == [Status.NEW, Status.END]
    # Back within 2 s: suppressed (counted); an ALERT is never suppressed.
    assert run(book, [(1000, finding()), (1100, finding())]) == []
    assert book.counts["refractory"] == 2
    ws = run(book, [(1200, finding(1.0, Severity.ALERT))])
    assert [w.status for w in ws] == [Status.NEW]
    # Other counterparts are other episodes, not suppressed.
    assert [w.status for w in run(book, [(1300, finding(cp="other"))])] == [Status.NEW]


def test_after_the_refractory_period_a_new_episode_opens() -> None:
    book = EpisodeBook(EpisodeConfig(refractory_s=1.0))
    first = run(book, [(0, finding()), (400, None)])
    later = run(book, [(2000, finding())])
    assert [w.status for w in later] == [Status.NEW]
    assert later[0].episode == first[0].episode + 1


def test_episode_bound() -> None:
    book = EpisodeBook(EpisodeConfig(max_episodes=2))
    ws = run(book, [(0, finding(cp="a")), (0, finding(cp="b")), (0, finding(cp="c"))])
    assert len(ws) == 2 and book.counts["overflow"] == 1


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(HazardConfigError, match=r"fcw\.ttc_s"):
        HazardConfig.from_mapping({"fcw": {"ttc_s": -1}})
    with pytest.raises(HazardConfigError, match=r"ebw\.bogus"):
        HazardConfig.from_mapping({"ebw": {"bogus": 1}})
    with pytest.raises(HazardConfigError, match="not valid TOML"):
        HazardConfig.loads("fcw = [")
    p = tmp_path / "hazards.toml"
    p.write_text("[hazards.fcw]\nttc_s = 3.0\n[hazards.episodes]\nrefractory_s = 0.5\n")
    cfg = HazardConfig.load_file(p)
    assert cfg.fcw.ttc_s == 3.0 and cfg.episodes.refractory_s == 0.5 and cfg.ebw.range_m == 150
    with pytest.raises(HazardConfigError, match="cannot read"):
        HazardConfig.load_file(tmp_path / "missing.toml")
    with pytest.raises(HazardConfigError, match="update_interval_s"):
        HazardConfig.from_mapping({"episodes": {"update_interval_s": 2.0, "expiry_s": 1.0}})
