"""The condition language of campaigns: a tokenizer, a recursive-descent parser and an evaluator.

Never ``eval``: text becomes a small tree of frozen nodes, which :class:`Condition` compiles
into stateful evaluators.

Grammar (keywords are lower case; durations need a unit: ``500ms``, ``2s``, ``1.5min``)::

    expr     := or
    or       := and ("or" and)*
    and      := not ("and" not)*
    not      := "not" not | compare
    compare  := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
    sum      := product (("+" | "-") product)*
    product  := unary (("*" | "/") unary)*
    unary    := "-" unary | primary
    primary  := NUMBER | "true" | "false" | SIGNAL | "(" expr ")"
              | ("min" | "max" | "avg" | "delta") "(" SIGNAL "," DURATION ")"
              | "abs" "(" expr ")"
              | "rising" "(" expr ")"
              | "held" "(" expr "," DURATION ")"

A ``SIGNAL`` is a decoded signal name such as ``BRAKE_MODULE.BRAKE_PRESSURE`` (letters, digits,
``_`` and ``.``), or any name in double quotes. ``event.KIND`` is 1 at the moment the agent
records an event of that kind and 0 otherwise.

Semantics, evaluated at a sample's capture time ``t`` (data time, not wall time):

* a signal is its latest sample; one never seen is *unknown*; arithmetic with unknown is
  unknown and a comparison with unknown is false;
* ``min/max/avg(S, d)`` cover S's samples in ``[t - d, t]``; ``delta(S, d)`` is the newest
  minus the oldest of them (for example ``delta(SPEED.SPEED, 1s) < -15``: lost 15 km/h within
  a second);
* ``rising(c)`` is true when ``c`` is true now and was not at the previous evaluation;
* ``held(c, d)`` is true once ``c`` has been true at every evaluation for at least ``d``.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.errors import CampaignError

MAX_EXPRESSION_CHARS = 2000
MAX_DEPTH = 40
MAX_WINDOW_S = 600.0
#: Samples kept per window, whatever the signal's rate.
MAX_WINDOW_SAMPLES = 100_000

Value = float | bool | None

# Tree -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Num:
    value: float


@dataclass(frozen=True, slots=True)
class Sig:
    name: str


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Node


@dataclass(frozen=True, slots=True)
class Arith:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Logic:
    op: str  # "and" | "or"
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class Window:
    func: str  # "min" | "max" | "avg" | "delta"
    signal: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Abs:
    operand: Node


@dataclass(frozen=True, slots=True)
class Rising:
    operand: Node


@dataclass(frozen=True, slots=True)
class Held:
    operand: Node
    seconds: float


Node = Num | Sig | Neg | Arith | Compare | Logic | Not | Window | Abs | Rising | Held

# Tokens -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # NUM, DUR, NAME, STR, OP, KW, END
    text: str
    pos: int
    value: float = 0.0


_KEYWORDS = frozenset({"and", "or", "not", "true", "false"})
_WINDOW_FUNCS = frozenset({"min", "max", "avg", "delta"})
_FUNCS = _WINDOW_FUNCS | {"abs", "rising", "held"}
_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0}
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(?P<unit>[A-Za-z]+)?
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<str>"[^"\\\n]{1,256}")
  | (?P<op><=|>=|==|!=|<|>|\+|-|\*|/|\(|\)|,)
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CampaignError(f"condition is {len(text)} characters long (max {MAX_EXPRESSION_CHARS})")
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise CampaignError(f"unexpected character {text[pos]!r} at column {pos + 1}")
        if m.group("num") is not None:
            number = float(m.group("num"))
            unit = m.group("unit")
            if unit is None:
                out.append(Token("NUM", m.group(0), pos, number))
            elif unit in _UNITS:
                out.append(Token("DUR", m.group(0), pos, number * _UNITS[unit]))
            else:
                raise CampaignError(
                    f"unknown unit {unit!r} at column {pos + 1} (use ms, s or min)"
                )
        elif m.group("name") is not None:
            word = m.group("name")
            out.append(Token("KW" if word in _KEYWORDS else "NAME", word, pos))
        elif m.group("str") is not None:
            out.append(Token("STR", m.group("str")[1:-1], pos))
        elif m.group("op") is not None:
            out.append(Token("OP", m.group("op"), pos))
        pos = m.end()
    out.append(Token("END", "", len(text)))
    return out


# Parser -----------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def error(self, msg: str, tok: Token | None = None) -> CampaignError:
        t = tok or self.tok
        where = "at the end" if t.kind == "END" else f"at column {t.pos + 1} ({t.text!r})"
        return CampaignError(f"{msg} {where}")

    def take(self) -> Token:
        t = self.tok
        self.i += 1
        return t

    def accept(self, kind: str, text: str | None = None) -> Token | None:
        t = self.tok
        if t.kind == kind and (text is None or t.text == text):
            self.i += 1
            return t
        return None

    def expect(self, kind: str, text: str, what: str) -> Token:
        t = self.accept(kind, text)
        if t is None:
            raise self.error(f"expected {what}")
        return t

    def parse(self) -> Node:
        node = self.or_()
        if self.tok.kind != "END":
            raise self.error("unexpected token")
        return node

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nested deeper than {MAX_DEPTH}")

    def or_(self) -> Node:
        self._enter()
        items = [self.and_()]
        while self.accept("KW", "or"):
            items.append(self.and_())
        self.depth -= 1
        return items[0] if len(items) == 1 else Logic("or", tuple(items))

    def and_(self) -> Node:
        items = [self.not_()]
        while self.accept("KW", "and"):
            items.append(self.not_())
        return items[0] if len(items) == 1 else Logic("and", tuple(items))

    def not_(self) -> Node:
        if self.accept("KW", "not"):
            self._enter()
            node = Not(self.not_())
            self.depth -= 1
            return node
        return self.compare()

    def compare(self) -> Node:
        left = self.sum_()
        t = self.tok
        if t.kind == "OP" and t.text in ("<", "<=", ">", ">=", "==", "!="):
            self.take()
            right = self.sum_()
            if self.tok.kind == "OP" and self.tok.text in ("<", "<=", ">", ">=", "==", "!="):
                raise self.error("comparisons cannot be chained; use 'and'")
            return Compare(t.text, left, right)
        return left

    def sum_(self) -> Node:
        node = self.product()
        while self.tok.kind == "OP" and self.tok.text in ("+", "-"):
            op = self.take().text
            node = Arith(op, node, self.product())
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.tok.kind == "OP" and self.tok.text in ("*", "/"):
            op = self.take().text
            node = Arith(op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.accept("OP", "-"):
            self._enter()
            node = Neg(self.unary())
            self.depth -= 1
            return node
        return self.primary()

    def primary(self) -> Node:
        t = self.tok
        if t.kind == "NUM":
            self.take()
            return Num(t.value)
        if t.kind == "DUR":
            raise self.error("a duration is only allowed as a window or 'held' argument")
        if t.kind == "KW" and t.text in ("true", "false"):
            self.take()
            return Num(1.0 if t.text == "true" else 0.0)
        if t.kind == "STR":
            self.take()
            return Sig(t.text)
        if t.kind == "NAME":
            self.take()
            if self.tok.kind == "OP" and self.tok.text == "(":
                return self.call(t)
            return Sig(t.text)
        if self.accept("OP", "("):
            self._enter()
            node = self.or_()
            self.depth -= 1
            self.expect("OP", ")", "')'")
            return node
        raise self.error("expected a number, a signal, a function or '('")

    def call(self, name: Token) -> Node:
        func = name.text
        if func not in _FUNCS:
            raise self.error(f"unknown function {func!r} (known: {', '.join(sorted(_FUNCS))})", name)
        self.expect("OP", "(", "'('")
        self._enter()
        if func in _WINDOW_FUNCS:
            sig = self.tok
            if sig.kind not in ("NAME", "STR") or self.tokens[self.i + 1].text != ",":
                raise self.error(f"{func}() takes a signal name and a duration")
            self.take()
            self.expect("OP", ",", "','")
            seconds = self.duration(func)
            node: Node = Window(func, sig.text, seconds)
        elif func == "held":
            operand = self.or_()
            self.expect("OP", ",", "',' and a duration")
            node = Held(operand, self.duration(func))
        elif func == "rising":
            node = Rising(self.or_())
        else:
            node = Abs(self.or_())
        self.expect("OP", ")", "')'")
        self.depth -= 1
        return node

    def duration(self, func: str) -> float:
        t = self.tok
        if t.kind == "NUM":
            raise self.error(f"{func}(): a duration needs a unit, like 2s or 500ms")
        if t.kind != "DUR":
            raise self.error(f"{func}(): expected a duration like 2s or 500ms")
        self.take()
        if not 0 < t.value <= MAX_WINDOW_S:
            raise self.error(f"{func}(): duration must be above 0 and at most {MAX_WINDOW_S:g} s", t)
        return t.value


def parse(text: str) -> Node:
    """Parse a condition; a :class:`CampaignError` names the problem and its column."""
    if not isinstance(text, str) or not text.strip():
        raise CampaignError("condition is empty")
    return _Parser(text).parse()


def signals_of(node: Node) -> set[str]:
    """Every signal a condition reads."""
    match node:
        case Sig(name):
            return {name}
        case Window(_, signal, _):
            return {signal}
        case Num():
            return set()
        case Neg(o) | Not(o) | Abs(o) | Rising(o) | Held(o, _):
            return signals_of(o)
        case Arith(_, a, b) | Compare(_, a, b):
            return signals_of(a) | signals_of(b)
        case Logic(_, items):
            out: set[str] = set()
            for it in items:
                out |= signals_of(it)
            return out
    raise AssertionError(node)


# Evaluation -------------------------------------------------------------------------------


class _Window:
    """Samples of one signal within a sliding data-time window."""

    __slots__ = ("ns", "samples", "total")

    def __init__(self, seconds: float) -> None:
        self.ns = int(seconds * 1e9)
        self.samples: deque[tuple[int, float]] = deque(maxlen=MAX_WINDOW_SAMPLES)
        self.total = 0.0

    def add(self, t_ns: int, v: float) -> None:
        if len(self.samples) == self.samples.maxlen:
            self.total -= self.samples[0][1]
        self.samples.append((t_ns, v))
        self.total += v

    def prune(self, t_ns: int) -> None:
        lo = t_ns - self.ns
        s = self.samples
        while s and s[0][0] < lo:
            self.total -= s.popleft()[1]
        if not s:
            self.total = 0.0

    def value(self, func: str) -> float | None:
        s = self.samples
        if not s:
            return None
        if func == "avg":
            return self.total / len(s)
        if func == "delta":
            return s[-1][1] - s[0][1]
        vals = [v for _, v in s]
        return min(vals) if func == "min" else max(vals)


_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b != 0 else math.nan,
}
_CMP: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _truth(v: Value) -> bool:
    return v is not None and bool(v) and not (isinstance(v, float) and math.isnan(v))


class Condition:
    """A parsed condition with its evaluation state (windows, edges, hold timers).

    Feed samples with :meth:`update` and evaluate with :meth:`evaluate` at a sample's time.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.tree = parse(text)
        self.signals = frozenset(signals_of(self.tree))
        self.values: dict[str, float] = {}
        self._windows: dict[tuple[str, float], _Window] = {}
        self._by_signal: dict[str, list[_Window]] = {}
        self._prev: dict[int, bool] = {}
        self._since: dict[int, int | None] = {}
        self._index: dict[int, int] = {}
        self._collect(self.tree)

    def _collect(self, node: Node) -> None:
        match node:
            case Window(_, signal, seconds):
                key = (signal, seconds)
                if key not in self._windows:
                    w = _Window(seconds)
                    self._windows[key] = w
                    self._by_signal.setdefault(signal, []).append(w)
            case Rising(o) | Held(o, _):
                self._index[id(node)] = len(self._index)
                self._collect(o)
            case Neg(o) | Not(o) | Abs(o):
                self._collect(o)
            case Arith(_, a, b) | Compare(_, a, b):
                self._collect(a)
                self._collect(b)
            case Logic(_, items):
                for it in items:
                    self._collect(it)

    def update(self, name: str, t_ns: int, value: float) -> None:
        """Record a sample of a signal this condition reads."""
        self.values[name] = value
        for w in self._by_signal.get(name, ()):
            w.add(t_ns, value)

    def evaluate(self, t_ns: int) -> bool:
        """The condition's truth at ``t_ns``; stateful nodes advance by one evaluation."""
        for w in self._windows.values():
            w.prune(t_ns)
        return _truth(self._eval(self.tree, t_ns))

    def _eval(self, node: Node, t: int) -> Value:
        match node:
            case Num(v):
                return v
            case Sig(name):
                return self.values.get(name)
            case Window(func, signal, seconds):
                return self._windows[(signal, seconds)].value(func)
            case Neg(o):
                x = self._eval(o, t)
                return None if x is None else -float(x)
            case Abs(o):
                x = self._eval(o, t)
                return None if x is None else abs(float(x))
            case Arith(op, a, b):
                x, y = self._eval(a, t), self._eval(b, t)
                if x is None or y is None:
                    return None
                return _ARITH[op](float(x), float(y))
            case Compare(op, a, b):
                x, y = self._eval(a, t), self._eval(b, t)
                if x is None or y is None:
                    return False
                return _CMP[op](float(x), float(y))
            case Not(o):
                return not _truth(self._eval(o, t))
            case Logic("and", items):
                # Evaluate every item so that stateful nodes see every evaluation.
                results = [_truth(self._eval(it, t)) for it in items]
                return all(results)
            case Logic(_, items):
                results = [_truth(self._eval(it, t)) for it in items]
                return any(results)
            case Rising(o):
                k = self._index[id(node)]
                now = _truth(self._eval(o, t))
                before = self._prev.get(k, False)
                self._prev[k] = now
                return now and not before
            case Held(o, seconds):
                k = self._index[id(node)]
                now = _truth(self._eval(o, t))
                if not now:
                    self._since[k] = None
                    return False
                since = self._since.get(k)
                if since is None:
                    self._since[k] = since = t
                return t - since >= int(seconds * 1e9)
        raise AssertionError(node)


def check(text: str) -> str:
    """Validate a condition's text (for config models); returns it unchanged."""
    parse(text)
    return text
