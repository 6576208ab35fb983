"""HTTP routes of the counter example (SOFAJRaft's counter service over HTTP)."""

from __future__ import annotations

from examples.common.http import Request, Response, text_response
from examples.common.service import HttpError, Service
from examples.counter.store import MAX_DELTA, CounterStore, encode_incr

__all__ = ["CounterApp"]


class CounterApp:
    """``POST /incr`` (body: the delta, default 1) answers the new value once applied;
    ``GET /value`` answers the value (linearizable unless ``?serializable=true``)."""

    def __init__(self, store: CounterStore, service: Service | None = None) -> None:
        self.store = store
        self.service = service

    def bind(self, service: Service) -> None:
        """Attach the service (created after the app because it needs the app's handler)."""
        self.service = service

    async def __call__(self, req: Request) -> Response | None:
        assert self.service is not None, "CounterApp.bind() was not called"
        if req.path == "/incr":
            if req.method != "POST":
                raise HttpError(405, "use POST /incr", (("allow", "POST"),))
            delta = _parse_delta(req.body)
            value = await self.service.propose(encode_incr(delta))
            return text_response(200, str(value))
        if req.path == "/value":
            if req.method != "GET":
                raise HttpError(405, "use GET /value", (("allow", "GET"),))
            if not req.flag("serializable"):
                await self.service.linearize()
            return text_response(200, str(self.store.value))
        return None


def _parse_delta(body: bytes) -> int:
    text = body.strip()
    if not text:
        return 1
    try:
        delta = int(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "the body must be an integer delta") from None
    if abs(delta) > MAX_DELTA:
        raise HttpError(400, f"delta out of range (|delta| <= {MAX_DELTA})")
    return delta
