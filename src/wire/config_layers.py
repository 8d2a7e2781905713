"""How agent and server configurations are layered: TOML, then environment, then command line.

Both read ``PREFIX__SECTION__KEY=value`` environment variables (``CVIS_AGENT__`` for the
agent, ``CVIS_SERVER__`` for the server): ``__`` separates levels, keys are lower-cased, and a
value is parsed as a TOML value when it parses (``512``, ``false``, ``["a"]``), else kept as
text. Pure functions; each package wraps the errors in its own ``ConfigError``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from wire.errors import ValidationError


def env_overrides(environ: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """``{prefix}SPOOL__BUDGET_MB=512`` -> ``{"spool": {"budget_mb": 512}}``."""
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(prefix):
            continue
        path = [p.lower() for p in key[len(prefix):].split("__")]
        if not all(path):
            raise ValidationError(f"environment variable {key}: empty key level")
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = out
        for p in path[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ValidationError(f"environment variable {key}: {p!r} is not a table")
            node = nxt
        node[path[-1]] = value
    return out


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top, tables merged key by key."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out
