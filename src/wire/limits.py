"""Size and count limits, checked before any work is done on untrusted input."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds for one encoded batch.

    ``max_encoded_bytes`` is also the broker's ``max_packet_size`` minus
    MQTT overhead; ``max_decoded_bytes`` bounds what zstd may produce, so a
    small bomb can never allocate more than this.
    """

    max_encoded_bytes: int = 16 * MiB
    max_decoded_bytes: int = 64 * MiB
    max_records: int = 1_000_000
    max_field_bytes: int = 16 * MiB
    max_string_chars: int = 1024
    max_map_entries: int = 4096

    def __post_init__(self) -> None:
        for name in self.__slots__:
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive")


DEFAULT_LIMITS = Limits()
