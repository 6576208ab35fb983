"""HTTP routes of the KV example (etcd raftexample's API, with linearizable reads)."""

from __future__ import annotations

from examples.common.http import Request, Response
from examples.common.service import HttpError, Service
from examples.kv.store import KVStore, encode_put

__all__ = ["MAX_KEY_BYTES", "KVApp"]

#: Longer keys are refused with 400 (they would bloat every snapshot record).
MAX_KEY_BYTES = 4096


class KVApp:
    """``PUT /<key>`` (204 once applied), ``GET /<key>`` (linearizable unless
    ``?serializable=true``; 404 when absent).

    Args:
        store: the state machine's data, read directly after a read barrier.
        service: the shared service (for proposals and read barriers).
    """

    def __init__(self, store: KVStore, service: Service | None = None) -> None:
        self.store = store
        self.service = service

    def bind(self, service: Service) -> None:
        """Attach the service (created after the app because it needs the app's handler)."""
        self.service = service

    async def __call__(self, req: Request) -> Response | None:
        assert self.service is not None, "KVApp.bind() was not called"
        key = _key_of(req.path)
        if req.method == "PUT":
            await self.service.propose(encode_put(key, req.body))
            return Response(204)
        if req.method == "GET":
            if not req.flag("serializable"):
                await self.service.linearize()
            value = self.store.get(key)
            if value is None:
                raise HttpError(404, f"key {key!r} not found")
            return Response(200, value, content_type="application/octet-stream")
        raise HttpError(405, "method not allowed (PUT or GET a key)", (("allow", "GET, PUT"),))


def _key_of(path: str) -> str:
    key = path[1:]
    if not key:
        raise HttpError(400, "missing key: use /<key>")
    if key.startswith("-/") or key == "metrics":
        raise HttpError(400, f"{key!r} is a reserved path, not a key")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise HttpError(400, f"key longer than {MAX_KEY_BYTES} bytes")
    return key
