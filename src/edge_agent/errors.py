"""edge_agent exceptions: one root, split by phase.

Configuration mistakes (``ConfigError``, ``CampaignError``) are local misuse and name the bad
key or expression; ``SourceError`` is a device that failed (retried with backoff, reported in
health); ``SpoolError`` is the on-disk store; ``UplinkError`` the MQTT side.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error raised by :mod:`edge_agent`."""


class ConfigError(AgentError, ValueError):
    """The agent configuration is invalid; the message names the key."""


class CampaignError(ConfigError):
    """A campaign (or one of its conditions) is invalid; the message names the problem."""


class SourceError(AgentError):
    """A source's device could not be opened or failed while running."""


class SpoolError(AgentError):
    """The spool database is unusable (corrupt, wrong agent, unreadable)."""


class UplinkError(AgentError):
    """The MQTT uplink could not be configured (bad URL, missing TLS files)."""
