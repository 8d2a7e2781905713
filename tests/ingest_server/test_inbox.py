"""The worker's inbox: bounded by messages and bytes, the MQTT thread waits while it is full."""

from __future__ import annotations

import threading

from ingest_server.worker import Inbox, InboxItem


def _item(n: int, size: int = 10) -> InboxItem:
    return InboxItem("cvis/v1/a/batch/s", b"x" * size, n, 1, 1, 0)


def test_put_waits_while_full_and_resumes_when_drained() -> None:
    inbox = Inbox(max_messages=3, max_bytes=1000)
    stop = threading.Event()
    for i in range(3):
        assert inbox.put(_item(i), stop)
    done = threading.Event()

    def producer() -> None:
        inbox.put(_item(3), stop)
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert not done.wait(0.3)  # full: the producer waits (TCP backpressure on the broker)
    assert len(inbox) == 3
    got = inbox.get_many(2, 0)
    assert [i.mid for i in got] == [0, 1]
    assert done.wait(5)
    t.join()
    assert [i.mid for i in inbox.get_many(10, 0)] == [2, 3]


def test_bytes_bound_and_stop_release() -> None:
    inbox = Inbox(max_messages=100, max_bytes=25)
    stop = threading.Event()
    assert inbox.put(_item(0, 20), stop)
    assert inbox.bytes == 20
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(inbox.put(_item(1, 20), stop)))
    t.start()
    stop.set()  # shutting down: a waiting put gives up (the broker redelivers the message)
    t.join(5)
    assert result == [False]
    assert len(inbox) == 1
    # One message larger than the whole bound still goes in when the inbox is empty.
    inbox.get_many(10, 0)
    assert inbox.put(_item(2, 100), threading.Event())
