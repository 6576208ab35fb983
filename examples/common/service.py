"""The HTTP service shared by the examples: routing, Raft errors, membership, status, metrics.

Status codes (the contract with clients):

* 2xx: done. ``PUT``/``POST`` answer only after the entry is committed and applied.
* 503: certainly not carried out; safe to retry (no leader, not the leader and no forwarding,
  proposal dropped, node stopping, a read that could not be linearized in time).
* 504: proposed, but the outcome is unknown (it may still commit); retry only if idempotent.
* 400: malformed request; 404: no such key or route; 405: method not allowed; 413: body too large.

Certainly-not-done failures that are transient (no leader during an election, a forward to a
leader that just died, a membership change already pending) are retried with backoff until the
request deadline, so a request sent in the middle of an election usually succeeds instead of
failing fast.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import trio

from examples.common.flags import FlagError, raft_address
from examples.common.http import Request, Response, json_response, text_response
from examples.common.metrics import CONTENT_TYPE, ExampleMetrics
from trioraft.errors import (
    AmbiguousOutcome,
    NodeStopped,
    NotLeader,
    ProposalDropped,
    RaftError,
    Timeout,
)

__all__ = ["HttpError", "RaftHandle", "Service"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: ProposalDropped reasons that will not clear by retrying (every other reason is transient:
#: no leader, a leader change, an unreachable old leader, a pending membership change...).
_PERMANENT = frozenset(
    {
        "too-large",
        "uncommitted-limit",
        "invalid-conf-change",
        "invalid-target",
    }
)


class RaftHandle(Protocol):
    """What the service needs from a node (``trioraft.RaftNode`` provides it)."""

    async def propose(self, data: bytes) -> Any: ...

    async def read_barrier(self) -> Any: ...

    async def add_voter(self, node_id: int, address: str) -> Any: ...

    async def add_learner(self, node_id: int, address: str) -> Any: ...

    async def remove(self, node_id: int) -> Any: ...


class HttpError(Exception):
    """Raised inside handlers to answer with ``status`` and ``text``."""

    def __init__(self, status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers


AppHandler = Callable[[Request], Awaitable[Response | None]]


class Service:
    """Routes requests to the application or to the shared routes, mapping Raft errors.

    Args:
        node: the Raft node.
        status: returns the ``/-/status`` document.
        request_timeout: seconds a request may wait for Raft.
        app: the application's handler; returns ``None`` for paths it does not own.
        metrics: optional metrics to record into and expose at ``/metrics``.
    """

    def __init__(
        self,
        node: RaftHandle,
        status: Callable[[], Mapping[str, Any]],
        *,
        request_timeout: float,
        app: AppHandler,
        metrics: ExampleMetrics | None = None,
    ) -> None:
        self.node = node
        self.status = status
        self.request_timeout = request_timeout
        self.app = app
        self.metrics = metrics

    # -- Raft calls with the error contract ---------------------------------------------------
    async def propose(self, data: bytes, *, deadline: float | None = None) -> Any:
        """Propose ``data`` and return the state machine's result.

        Args:
            data: the command.
            deadline: ``trio.current_time()`` by which to answer (default: the request timeout
                from now).

        Raises:
            HttpError: 503 (certainly not done), 504 (outcome unknown) or 413 (too large).
        """
        return await self.call_raft(
            lambda: self.node.propose(data), proposal=True, deadline=deadline
        )

    async def linearize(self) -> None:
        """Wait for a linearizable read point (ReadIndex through the leader).

        Raises:
            HttpError: 503 when no read point could be obtained in time.
        """
        await self.call_raft(self.node.read_barrier, proposal=False)

    async def call_raft(
        self, fn: Callable[[], Awaitable[T]], *, proposal: bool, deadline: float | None = None
    ) -> T:
        """Run ``fn`` under the request deadline, retrying transient certain failures.

        Args:
            fn: starts one attempt.
            proposal: True when an attempt may have appended an entry (a timeout is then
                ambiguous: 504); False for reads (a timeout means nothing happened: 503).
            deadline: when to give up (default: the request timeout from now).
        """
        if deadline is None:
            deadline = trio.current_time() + self.request_timeout
        delay = 0.02
        last: str = "no leader"
        while True:
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise HttpError(503, f"unavailable: {last}", (("retry-after", "1"),))
            attempted = False
            with trio.move_on_after(remaining):
                try:
                    attempted = True
                    return await fn()
                except AmbiguousOutcome as exc:
                    raise HttpError(504, f"outcome unknown: {exc}") from None
                except Timeout as exc:
                    # (not AmbiguousOutcome, caught above): certainly nothing happened, for
                    # reads and proposals alike; loop and time out as 503
                    last = str(exc)
                    attempted = False
                except NotLeader as exc:
                    hint = "" if exc.leader_hint is None else str(exc.leader_hint)
                    headers: tuple[tuple[str, str], ...] = ()
                    if exc.leader_address:
                        headers = (("x-raft-leader", exc.leader_address),)
                    if exc.leader_hint is not None:
                        raise HttpError(503, f"not the leader; leader is {hint}", headers) from None
                    last = "no leader known"
                    attempted = False
                except ProposalDropped as exc:
                    if exc.reason == "too-large":
                        raise HttpError(413, f"entry too large: {exc}") from None
                    if exc.reason in _PERMANENT:
                        raise HttpError(503, f"not done: {exc}", (("retry-after", "1"),)) from None
                    last = str(exc)
                    attempted = False
                except NodeStopped as exc:
                    if proposal:  # stopped while the proposal was outstanding: it may commit
                        raise HttpError(504, f"outcome unknown: node stopping: {exc}") from None
                    raise HttpError(503, f"node stopping: {exc}") from None
                except RaftError as exc:
                    if proposal:  # e.g. a forwarded proposal failing at the leader after appending
                        raise HttpError(504, f"outcome unknown: {exc}") from None
                    raise HttpError(503, f"not done: {exc}") from None
            if attempted:
                # The deadline cancelled an attempt in flight.
                if proposal:
                    raise HttpError(504, "outcome unknown: request timed out after proposing")
                raise HttpError(503, "unavailable: read barrier timed out", (("retry-after", "1"),))
            await trio.sleep(min(delay, max(0.0, deadline - trio.current_time())))
            delay = min(delay * 2, 0.5)

    # -- routing -----------------------------------------------------------------------------
    async def handle(self, req: Request) -> Response:
        """The HTTP handler: never raises for application or Raft errors."""
        start = trio.current_time()
        route = _route_label(req.path)
        try:
            response = await self._dispatch(req)
        except HttpError as exc:
            response = text_response(exc.status, exc.text, exc.headers)
        if self.metrics is not None:
            self.metrics.observe(req.method, route, response.status, trio.current_time() - start)
        return response

    async def _dispatch(self, req: Request) -> Response:
        if req.path == "/-/status":
            if req.method != "GET":
                raise HttpError(405, "method not allowed")
            return json_response(200, dict(self.status()))
        if req.path == "/metrics" and req.method == "GET" and self.metrics is not None:
            return Response(200, self.metrics.render(), content_type=CONTENT_TYPE)
        member = _member_id(req.path)
        if member is not None and req.method in ("POST", "DELETE"):
            if member > _MAX_NODE_ID:
                raise HttpError(400, f"node ids are at most {_MAX_NODE_ID}")
            return await self._membership(req, member)
        response = await self.app(req)
        if response is None:
            raise HttpError(404, "not found")
        return response

    async def _membership(self, req: Request, node_id: int) -> Response:
        if req.method == "DELETE":
            try:
                await self.call_raft(lambda: self.node.remove(node_id), proposal=True)
            except HttpError as exc:
                # Removing the very node serving the request: the leader drops its connections
                # to it as it applies the removal, before the forwarded call's answer is back.
                # The change applies here too; wait for it rather than answer "unknown".
                if exc.status != 504 or self.status().get("id") != node_id:
                    raise
                if not await self._left_configuration(node_id):
                    raise
            return Response(204)
        try:
            url = req.body.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise HttpError(400, "the body must be the new node's raft URL") from None
        try:
            address = raft_address(url)
        except FlagError as exc:
            raise HttpError(400, str(exc)) from None
        if req.flag("learner"):
            if node_id in _conf_members(self.status(), "voters"):
                # Adding a voter as a learner demotes it (and shrinks the quorum): not by accident.
                raise HttpError(409, f"node {node_id} is a voter; remove it first")
            await self.call_raft(lambda: self.node.add_learner(node_id, address), proposal=True)
        else:
            await self.call_raft(lambda: self.node.add_voter(node_id, address), proposal=True)
        return Response(204)

    async def _left_configuration(self, node_id: int) -> bool:
        """Wait (up to the request timeout) until this node's applied configuration no longer
        has ``node_id``; whether it happened."""
        deadline = trio.current_time() + self.request_timeout
        keys = ("voters", "learners", "voters_outgoing", "learners_next")
        while any(node_id in _conf_members(self.status(), k) for k in keys):
            if trio.current_time() >= deadline:
                return False
            await trio.sleep(0.02)
        return True


#: node ids are unsigned 64-bit integers on the wire
_MAX_NODE_ID = (1 << 64) - 1


def _conf_members(status: Mapping[str, Any], key: str) -> tuple[int, ...]:
    """The ids under ``key`` (``"voters"``, ...) of a status document's configuration."""
    conf = status.get("conf")
    members = conf.get(key) if isinstance(conf, Mapping) else None
    return tuple(int(x) for x in members or ())


def _member_id(path: str) -> int | None:
    """The node id of ``/<id>`` paths (a positive decimal integer), else None."""
    rest = path[1:]
    if rest.isdigit() and rest.isascii() and not rest.startswith("0"):
        return int(rest)
    return None


def _route_label(path: str) -> str:
    """A low-cardinality route label for metrics (keys are not labels)."""
    if path in ("/-/status", "/metrics", "/incr", "/value"):
        return path
    if _member_id(path) is not None:
        return "/<id>"
    return "/<key>"
