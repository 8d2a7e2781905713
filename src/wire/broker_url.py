"""Broker URLs as every cvis component writes them: ``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]``.

``tcp://`` and ``ssl://`` (paho's spellings) are accepted too. The port defaults to 1883, or
8883 with TLS. A bare ``HOST[:PORT]`` is taken as ``mqtt://`` only where ``allow_bare`` says so
(command-line flags); configuration files must name the scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from wire.errors import ValidationError

TLS_SCHEMES = ("mqtts", "ssl")
SCHEMES = ("mqtt", "tcp", *TLS_SCHEMES)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str, *, allow_bare: bool = False, tls: bool = False) -> BrokerAddress:
    """Parse a broker URL; ``tls`` forces TLS (and its default port) whatever the scheme."""
    if "://" not in url:
        if not allow_bare:
            raise ValidationError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
        url = f"mqtt://{url}"
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValidationError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValidationError(f"broker URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"broker URL {url!r}: {exc}") from None
    secure = tls or parts.scheme in TLS_SCHEMES
    return BrokerAddress(parts.hostname, port or (8883 if secure else 1883), secure)
