"""firmware_bridges exceptions: one root, split by phase.

Garbage from a device is normally not raised: parsers count it and
resynchronise. These errors are for what a caller must handle.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error raised by :mod:`firmware_bridges`."""


class ConfigError(BridgeError, ValueError):
    """Local misuse: a bad option, an unknown protocol, a DBC without the named message."""


class TransportError(BridgeError):
    """A device could not be opened, or went away (USB unplugged, socket closed)."""


class DeviceError(BridgeError):
    """A device answered a command with an error (for example the SLCAN bell)."""


class FrameError(BridgeError):
    """Raised only by strict, one-shot decoding helpers; stream parsers count instead."""
