"""Small pieces shared by the transports: reconnect backoff, a bytes/s throttle, address parsing
and the counters every transport keeps."""

from __future__ import annotations

import functools
import math
import random

import attrs
import trio

__all__ = [
    "Backoff",
    "Throttle",
    "TransportStats",
    "crc32c_combine",
    "format_address",
    "parse_address",
]


class Backoff:
    """Jittered exponential backoff ("full jitter"): each delay is drawn uniformly from
    [initial, min(maximum, initial * 2**attempt)], so nodes restarting together do not reconnect
    in lock step.

    Args:
        initial: the smallest delay, seconds.
        maximum: the cap, seconds.
        rng: the randomness source (seeded by the caller for reproducible runs).
    """

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self._initial = initial
        self._maximum = maximum
        self._rng = rng
        self._attempt = 0

    def next(self) -> float:
        """The delay before the next attempt; grows with each call until :meth:`reset`."""
        ceiling = min(self._maximum, self._initial * (2.0 ** min(self._attempt, 60)))
        self._attempt += 1
        return self._rng.uniform(self._initial, ceiling)

    def reset(self) -> None:
        """Called after a success: the next delay starts small again."""
        self._attempt = 0


class Throttle:
    """A token bucket limiting bytes/s, on Trio time; may be shared by several streams.

    Tokens accrue at ``rate`` per second up to ``burst``. :meth:`take` may drive the balance
    negative (a chunk larger than the burst is allowed) and then sleeps until the debt is paid,
    so over any long run the throughput is ``rate``. Callers are served in FIFO order.

    Args:
        rate: bytes per second (> 0).
        burst: bucket size in bytes (default: one second's worth, at least 1).
    """

    def __init__(self, rate: float, burst: int | None = None) -> None:
        if not rate > 0 or math.isinf(rate):
            raise ValueError("throttle rate must be a positive finite number of bytes/s")
        self.rate = float(rate)
        self.burst = max(1, int(rate) if burst is None else burst)
        self._tokens = float(self.burst)
        self._stamp: float | None = None
        self._lock = trio.Lock()

    async def take(self, n: int) -> float:
        """Consumes ``n`` bytes' worth of tokens, sleeping as needed. Returns the seconds waited."""
        async with self._lock:
            now = trio.current_time()
            if self._stamp is not None:
                self._tokens = min(
                    float(self.burst), self._tokens + (now - self._stamp) * self.rate
                )
            self._stamp = now
            self._tokens -= n
            if self._tokens >= 0:
                await trio.lowlevel.checkpoint()
                return 0.0
            wait = -self._tokens / self.rate
            await trio.sleep_until(now + wait)
            # The debt accrued while sleeping is exactly repaid: restart from an empty bucket.
            self._tokens = 0.0
            self._stamp = now + wait
            return wait


@attrs.define
class TransportStats:
    """Counters a transport keeps (all monotonically increasing)."""

    messages_sent: int = 0  #: Raft messages handed to a connection (or the simulated network)
    messages_received: int = 0  #: Raft messages delivered to the handler
    dropped_overflow: int = 0  #: send() found the peer's queue full
    dropped_unreachable: int = 0  #: no connection to the peer (or partitioned)
    dropped_unknown_peer: int = 0  #: send() to a node that is not a peer
    dropped_too_large: int = 0  #: encoded message above the frame limit
    dropped_fault: int = 0  #: dropped by simulated loss (memory transport)
    misaddressed: int = 0  #: inbound messages whose src/dst did not match the connection
    connects: int = 0  #: outbound connections established
    connect_failures: int = 0  #: outbound connection attempts that failed
    handshakes_refused: int = 0  #: inbound connections refused at the handshake
    bad_frames: int = 0  #: inbound connections closed because of a malformed frame
    calls_sent: int = 0
    calls_served: int = 0
    snapshots_sent: int = 0  #: streams that completed
    snapshots_failed: int = 0  #: streams that raised (stalled, rejected, aborted)
    snapshot_bytes_sent: int = 0  #: chunk payload bytes sent, re-sends included
    snapshots_received: int = 0  #: streams committed on this node
    snapshot_bytes_received: int = 0
    snapshot_crc_errors: int = 0  #: chunks refused on this node because of a CRC mismatch


def parse_address(address: str) -> tuple[str, int]:
    """Splits ``"host:port"`` (or ``"[v6addr]:port"``).

    Raises:
        ValueError: malformed address or port out of range.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range in {address!r}")
    return host, port


def format_address(host: str, port: int) -> str:
    """The inverse of :func:`parse_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------------------------
# CRC32C of a concatenation from the CRCs of its parts
#
# Theory of operation. A CRC is the remainder of the message polynomial (times x^32) modulo the
# generator P, so appending n zero bytes multiplies the register by x^(8n) mod P; with the
# standard pre/post inversion the inversions of both parts cancel and
#     crc(A || B) = (crc(A) * x^(8 len B) mod P) xor crc(B).
# Polynomials are kept bit-reversed, as CRC32C computes them (bit 31 is x^0). The power of x for
# a length is built by square-and-multiply from x^(2^k) and cached per length: a stream's
# chunks almost all have the same length, so a combine is one carry-less multiply (<= 32 steps).

_CRC32C_POLY = 0x82F63B78  # Castagnoli, reversed


def _mul_mod_p(a: int, b: int) -> int:
    """a(x) * b(x) mod P in the reversed representation."""
    product = 0
    bit = 1 << 31  # the coefficient of x^0
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _CRC32C_POLY if b & 1 else b >> 1
    return product


def _x_pow_2k() -> list[int]:
    table = [1 << 30]  # x^1
    for _ in range(63):
        table.append(_mul_mod_p(table[-1], table[-1]))
    return table


_X_POW_2K = _x_pow_2k()


@functools.lru_cache(maxsize=64)
def _x_pow_8n(n: int) -> int:
    """x^(8n) mod P."""
    result = 1 << 31  # x^0
    k = 3  # 8n = n * 2^3
    while n:
        if n & 1:
            result = _mul_mod_p(_X_POW_2K[k % 64], result)
        n >>= 1
        k += 1
    return result


def crc32c_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """CRC32C of ``A + B`` from ``crc_a`` = CRC32C(A), ``crc_b`` = CRC32C(B) and ``len(B)``."""
    if len_b <= 0:
        return crc_a
    return _mul_mod_p(_x_pow_8n(len_b), crc_a) ^ crc_b
