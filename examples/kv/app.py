"""HTTP routes of the KV example (etcd raftexample's API, with linearizable reads)."""

from __future__ import annotations

from examples.common.batching import GroupCommit
from examples.common.http import Request, Response
from examples.common.service import HttpError, Service
from examples.kv.store import KVStore, encode_puts

__all__ = ["MAX_KEY_BYTES", "KVApp"]

#: Longer keys are refused with 400 (they would bloat every snapshot record).
MAX_KEY_BYTES = 4096


class KVApp:
    """``PUT /<key>`` (204 once applied), ``GET /<key>`` (linearizable unless
    ``?serializable=true``; 404 when absent).

    Concurrent PUTs are grouped into shared entries (:class:`GroupCommit`); each still answers
    only once its value is committed and applied.

    Args:
        store: the state machine's data, read directly after a read barrier.
        service: the shared service (for proposals and read barriers).
        max_inflight: PUT batches proposed at the same time.
    """

    def __init__(
        self, store: KVStore, service: Service | None = None, *, max_inflight: int = 1
    ) -> None:
        self.store = store
        self.service: Service | None = None
        self.puts: GroupCommit[tuple[str, bytes]] | None = None
        self._max_inflight = max_inflight
        if service is not None:
            self.bind(service)

    def bind(self, service: Service) -> None:
        """Attach the service (created after the app because it needs the app's handler)."""
        self.service = service

        async def propose(pairs: list[tuple[str, bytes]], deadline: float) -> None:
            await service.propose(encode_puts(pairs), deadline=deadline)

        self.puts = GroupCommit(
            propose, timeout=service.request_timeout, max_inflight=self._max_inflight
        )

    async def __call__(self, req: Request) -> Response | None:
        assert self.service is not None and self.puts is not None, "KVApp.bind() was not called"
        key = _key_of(req.path)
        if req.method == "PUT":
            await self.puts.submit((key, req.body), len(key) + len(req.body))
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
