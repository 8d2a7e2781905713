"""The server side of wire.control time sync: answer ``time/request`` on ``time/response``.

An agent publishes a :class:`wire.control.TimeRequest` (its send time ``t1``) on
``cvis/v1/{agent}/time/request``; the server stamps ``t2`` when the message arrives and ``t3``
just before it answers on ``cvis/v1/{agent}/time/response`` (QoS 0: a late answer is useless,
the agent simply asks again). :func:`answer` is pure; the ingest worker calls it from its MQTT
callback so ``t2`` is taken as early as possible. Workers answer through a shared
subscription, so each request gets exactly one answer however many workers run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from wire.control import TimeRequest, TimeResponse
from wire.errors import WireError
from wire.limits import Limits
from wire.topics import TopicKind, parse_topic, time_response_topic

log = logging.getLogger(__name__)

#: A time request is a handful of integers; anything larger is not one.
MAX_REQUEST_BYTES = 256
_LIMITS = Limits(max_encoded_bytes=MAX_REQUEST_BYTES, max_decoded_bytes=MAX_REQUEST_BYTES,
                 max_records=16, max_field_bytes=64, max_map_entries=16)


def answer(
    topic: str, payload: bytes, t2_ns: int, clock: Callable[[], int] = time.time_ns
) -> tuple[str, bytes] | None:
    """The ``(topic, payload)`` to publish for a request, or None if it is not a valid one."""
    try:
        parsed = parse_topic(topic)
        if parsed.kind is not TopicKind.TIME_REQUEST:
            return None
        if len(payload) > MAX_REQUEST_BYTES:
            log.debug("time sync: %d-byte request on %s ignored", len(payload), topic)
            return None
        req = TimeRequest.decode(payload, _LIMITS)
    except WireError as exc:
        log.debug("time sync: bad request on %s: %s", topic, exc)
        return None
    resp = TimeResponse(req.request_id, req.t1_ns, t2_ns, clock())
    return time_response_topic(parsed.agent), resp.encode()
