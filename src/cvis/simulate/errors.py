"""The traffic simulator's exceptions: one root."""

from __future__ import annotations


class SimulationError(Exception):
    """Root of every error raised by :mod:`cvis.simulate`."""


class ScenarioError(SimulationError, ValueError):
    """A scenario file is invalid; the message names the file and the bad key."""


class SimulationConnectError(SimulationError):
    """The broker could not be reached."""
