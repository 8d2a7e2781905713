"""The campaign condition language: parsing, errors that name the problem, evaluation semantics."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.campaigns.expression import (
    Compare,
    Condition,
    Held,
    Logic,
    Num,
    Rising,
    Sig,
    Window,
    parse,
)
from edge_agent.errors import CampaignError

S = 1_000_000_000


def test_parses_precedence_and_functions() -> None:
    tree = parse("a > 1 and not b < 2 or held(avg(SPEED.SPEED, 500ms) >= 3 * 2, 1.5s)")
    assert isinstance(tree, Logic) and tree.op == "or"
    left, right = tree.items
    assert isinstance(left, Logic) and left.op == "and"
    assert left.items[0] == Compare(">", Sig("a"), Num(1.0))
    assert isinstance(right, Held) and right.seconds == 1.5
    assert isinstance(right.operand, Compare)
    assert right.operand.left == Window("avg", "SPEED.SPEED", 0.5)
    odd = Sig("odd name/with slash")
    assert parse('rising("odd name/with slash" > 0)') == Rising(Compare(">", odd, Num(0.0)))
    assert parse("max(x, 1min)") == Window("max", "x", 60.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("speed >", "expected a number, a signal, a function or '(' at the end"),
        ("avg(speed, 2)", "needs a unit"),
        ("avg(speed, 2h)", "unknown unit 'h'"),
        ("avg(speed + 1, 2s)", "takes a signal name and a duration"),
        ("held(x > 1)", "expected ',' and a duration"),
        ("__import__('os').system('true')", "unexpected character"),
        ("open(x)", "unknown function 'open'"),
        ("a < b < c", "cannot be chained"),
        ("a > 1)", "unexpected token at column 6"),
        ("x > 2s", "duration is only allowed"),
        ("max(x, 0s)", "duration must be above 0"),
        ("(" * 60 + "1" + ")" * 60, "nested deeper"),
    ],
)
def test_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(CampaignError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(text)


@given(st.text(max_size=80))
@settings(max_examples=300, deadline=None)
def test_any_text_parses_or_raises_campaign_error(text: str) -> None:
    try:
        parse(text)
    except CampaignError:
        pass


def feed(cond: Condition, name: str, samples: list[tuple[float, float]]) -> list[bool]:
    out = []
    for t, v in samples:
        cond.update(name, int(t * S), v)
        out.append(cond.evaluate(int(t * S)))
    return out


def test_windowed_functions_cover_the_data_time_window() -> None:
    c = Condition("avg(v, 1s) > 5")
    # avg over [t-1s, t]: 0,10 -> 5 (not > 5); then 10,10 -> 10.
    assert feed(c, "v", [(0.0, 0), (0.5, 10), (1.2, 10)]) == [False, False, True]
    c = Condition("min(v, 1s) > 1 and max(v, 1s) < 9")
    assert feed(c, "v", [(0, 5), (0.5, 9), (1.6, 4), (2.0, 3)]) == [True, False, True, True]
    c = Condition("delta(v, 1s) <= -4")  # newest minus oldest in the window
    assert feed(c, "v", [(0, 20), (0.5, 18), (1.0, 16), (1.4, 15), (3.0, 15)]) == [
        False, False, True, False, False]


def test_rising_edge_and_held_duration() -> None:
    c = Condition("rising(v > 1)")
    assert feed(c, "v", [(0, 0), (1, 2), (2, 3), (3, 0), (4, 5)]) == [False, True, False, False, True]
    c = Condition("held(v > 1, 2s)")
    assert feed(c, "v", [(0, 2), (1, 2), (2, 2), (2.5, 0), (3, 2), (4.9, 2), (5, 2)]) == [
        False, False, True, False, False, False, True]


def test_unknown_signals_are_false_not_errors() -> None:
    c = Condition("never_seen > 1 or not (never_seen < 1)")
    # "not (unknown < 1)" is true: a comparison with unknown is false, its negation true.
    assert feed(c, "other", [(0, 1)]) == [True]
    c = Condition("a / b > 1")
    assert feed(c, "a", [(0, 3)]) == [False]  # b unknown
    c.update("b", 1 * S, 0.0)
    assert not c.evaluate(1 * S)  # division by zero is NaN, and NaN compares false
    assert c.signals == {"a", "b"}
