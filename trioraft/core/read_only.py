"""ReadIndex bookkeeping (Raft dissertation 6.4) for the SAFE read mode.

Theory of operation: a read request is admitted at the leader's current commit index and given
a fresh heartbeat context (a counter, so client contexts may repeat and stale acknowledgements of
earlier terms never match). The leader then broadcasts a heartbeat carrying the newest pending
context; once a quorum of voters has echoed a context, that request *and every request admitted
before it* are confirmed (the echoes prove the leader was still leader after they were admitted),
and each may be served once the state machine has applied up to its index.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import attrs

from trioraft.core.types import NodeId

__all__ = ["ReadOnly", "ReadRequest"]


@attrs.define
class ReadRequest:
    """One pending read: who asked (``src``; our own id for local calls), the caller's context,
    the commit index at admission and the voters that acknowledged it."""

    src: NodeId
    context: bytes
    index: int
    key: bytes
    acks: set[NodeId] = attrs.Factory(set)


class ReadOnly:
    """Queue of reads waiting for leadership confirmation."""

    def __init__(self) -> None:
        self._queue: deque[ReadRequest] = deque()
        self._by_key: dict[bytes, ReadRequest] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self._queue)

    def add_request(self, index: int, src: NodeId, context: bytes, self_id: NodeId) -> bytes:
        """Admit a read at commit ``index``; returns its heartbeat context. The leader's own
        acknowledgement is recorded at once."""
        self._counter += 1
        key = b"ri" + self._counter.to_bytes(8, "big")
        req = ReadRequest(src=src, context=context, index=index, key=key, acks={self_id})
        self._queue.append(req)
        self._by_key[key] = req
        return key

    def recv_ack(self, node: NodeId, key: bytes) -> set[NodeId] | None:
        """Record ``node``'s echo of ``key``; returns the acknowledgers so far, or None if the
        context is unknown (stale)."""
        req = self._by_key.get(key)
        if req is None:
            return None
        req.acks.add(node)
        return req.acks

    def advance(self, key: bytes) -> list[ReadRequest]:
        """Pop and return every request up to and including the one with ``key``."""
        if key not in self._by_key:
            return []
        out: list[ReadRequest] = []
        while self._queue:
            req = self._queue.popleft()
            del self._by_key[req.key]
            out.append(req)
            if req.key == key:
                break
        return out

    def confirmed(self, quorum: Callable[[set[NodeId]], bool]) -> list[ReadRequest]:
        """Pop and return the requests confirmed by acknowledgements already received: every
        request up to the newest one whose acknowledgers make a ``quorum`` (after a
        configuration change, a smaller quorum may already be there)."""
        for req in reversed(self._queue):
            if quorum(req.acks):
                return self.advance(req.key)
        return []

    def last_pending_key(self) -> bytes:
        """Context of the newest pending request (b"" when none)."""
        return self._queue[-1].key if self._queue else b""

    def reset(self) -> None:
        """Drop every pending request (leadership lost); the counter keeps increasing."""
        self._queue.clear()
        self._by_key.clear()
