"""Shared machinery of the cluster benchmarks.

Everything here is plain synchronous Python (subprocess, sockets, threads): the drivers start
nodes as separate processes, talk to them over a tiny JSON-lines control protocol on their
stdin/stdout, sample their memory from ``/proc``, run the raw hardware baselines, and print a
table plus one JSON document.

Process hygiene: every child is started in its own session with a parent-death signal (Linux),
registered in a :class:`ProcessSet`, and stopped (SIGTERM, then SIGKILL) when the set is left,
whether the benchmark finished, failed or was interrupted (Ctrl-C or SIGTERM, see
:func:`handle_signals`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import platform
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "MIB",
    "PYTHON",
    "REPO_ROOT",
    "BenchError",
    "ControlledProcess",
    "EtcdCluster",
    "NodeCluster",
    "PeakRss",
    "ProcessSet",
    "Progress",
    "free_ports",
    "handle_signals",
    "hwm_mib",
    "key_for",
    "machine_info",
    "make_value_pool",
    "percentile",
    "print_table",
    "ratio",
    "raw_loopback_copy",
    "raw_write_fsync",
    "reset_hwm",
    "rounded",
    "rss_mib",
    "value_for",
    "wait_until",
    "work_dir",
    "write_json",
]

MIB = 1 << 20
PYTHON = sys.executable
REPO_ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A benchmark step failed (a node died, a wait timed out, a tool is missing...)."""


# -- signals and progress -------------------------------------------------------------------------


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into ``KeyboardInterrupt`` so every ``with`` block unwinds and stops
    its processes, exactly as on Ctrl-C."""

    def raise_interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Progress:
    """Phase and progress lines on stderr: one rewritten line on a terminal, throttled plain
    lines otherwise (so logs of CI runs stay readable).

    Args:
        enabled: False silences everything (the smoke test's ``--quiet``).
        stream: where to write (stderr).
    """

    def __init__(self, enabled: bool = True, stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self._last_plain = 0.0
        self._pending_cr = False

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self.t0:7.1f}s]"

    def phase(self, text: str) -> None:
        """Start a new phase (always printed)."""
        if not self.enabled:
            return
        self._end_line()
        print(f"{self._stamp()} {text}", file=self.stream, flush=True)

    def update(self, text: str, fraction: float | None = None) -> None:
        """Report progress inside a phase (rewritten in place on a terminal, at most every 5 s
        otherwise)."""
        if not self.enabled:
            return
        bar = ""
        if fraction is not None:
            frac = min(max(fraction, 0.0), 1.0)
            filled = int(frac * 24)
            bar = f"[{'#' * filled}{'.' * (24 - filled)}] {frac * 100:5.1f}% "
        line = f"{self._stamp()}   {bar}{text}"
        if self.tty:
            print("\r" + line[:150].ljust(150), end="", file=self.stream, flush=True)
            self._pending_cr = True
        elif time.monotonic() - self._last_plain >= 5.0:
            self._last_plain = time.monotonic()
            print(line, file=self.stream, flush=True)

    def _end_line(self) -> None:
        if self._pending_cr:
            print(file=self.stream, flush=True)
            self._pending_cr = False

    def done(self) -> None:
        """Finish the current progress line."""
        if self.enabled:
            self._end_line()


def wait_until(
    what: str,
    check: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.05,
    progress: Callable[[float], None] | None = None,
) -> Any:
    """Call ``check`` until it returns a truthy value and return that value.

    Raises:
        BenchError: not within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        if progress is not None:
            progress(time.monotonic())
        time.sleep(interval)


# -- ports, directories -------------------------------------------------------------------------


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct currently free TCP ports on ``host`` (all held open while choosing)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def work_dir(path: str | None, prefix: str) -> Iterator[Path]:
    """A working directory: ``path`` (kept) or a fresh temp dir (removed afterwards).

    The temp dir goes under ``$TMPDIR`` (which should be on the disk being measured)."""
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    p = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield p
    finally:
        shutil.rmtree(p, ignore_errors=True)


# -- processes ----------------------------------------------------------------------------------


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no libc
        return None


# Loaded in the parent: the pre-exec hook must not import or take locks after fork().
_LIBC = _load_libc()


def _child_setup() -> None:  # pragma: no cover - runs in the child
    """Children die with the benchmark even if it is SIGKILLed (Linux prctl). The signal
    comes when the *thread* that started the child exits: benchmarks start children from the
    main thread."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


class ProcessSet:
    """Starts child processes and guarantees they are all stopped when the ``with`` block ends.

    Each child gets its own session (a terminal's Ctrl-C reaches only the benchmark, which then
    stops the children in order) and its output goes to a log file.
    """

    def __init__(self, *, grace: float = 10.0) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self.grace = grace

    #: pid -> the signal that stops it gracefully (SIGINT for profiler-wrapped children)
    _stop_signals: dict[int, int] = {}

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path = REPO_ROOT,
        stop_signal: int = signal.SIGTERM,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv``; stderr (and stdout unless given) append to ``log_path``.

        ``stop_signal`` is what :meth:`stop` sends first (to the child's process group)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            full_env = dict(os.environ)
            full_env.setdefault("PYTHONUNBUFFERED", "1")
            # Children start like an installed program: with cached bytecode (kept outside the
            # repository), even where the environment disables writing it.
            full_env.pop("PYTHONDONTWRITEBYTECODE", None)
            full_env.setdefault(
                "PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "trioraft-bench-pycache")
            )
            full_env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
            if env:
                full_env.update(env)
            proc = subprocess.Popen(
                list(argv),
                stdin=stdin,
                stdout=log if stdout is None else stdout,
                stderr=log,
                cwd=str(cwd),
                env=full_env,
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        finally:
            log.close()
        self._procs.append(proc)
        ProcessSet._stop_signals[proc.pid] = stop_signal
        return proc

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        """Signal the child's process group (its session, so grandchildren too)."""
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], *, timeout: float = 10.0, kill: bool = False) -> None:
        """Stop one child: SIGKILL when ``kill``, else SIGTERM then SIGKILL after ``timeout``."""
        if proc.poll() is not None:
            return
        graceful = ProcessSet._stop_signals.get(proc.pid, signal.SIGTERM)
        ProcessSet._signal(proc, signal.SIGKILL if kill else graceful)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            ProcessSet._signal(proc, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        """Signal every live child (SIGTERM), wait up to ``grace`` seconds, SIGKILL the rest."""
        live = [p for p in self._procs if p.poll() is None]
        for p in live:
            self._signal(p, ProcessSet._stop_signals.get(p.pid, signal.SIGTERM))
        deadline = time.monotonic() + self.grace
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(p, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)
        for p in self._procs:
            for stream in (p.stdin, p.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._procs = [p for p in self._procs if p.poll() is None]


class ControlledProcess:
    """A child speaking the benchmarks' control protocol: JSON lines on stdin (requests
    ``{"id": n, "op": ..., ...}``) and stdout (replies ``{"id": n, "ok": bool, ...}`` and events
    ``{"event": name, ...}``). Used for both the trioraft and the PySyncObj node scripts.

    Attributes:
        name: for messages.
        proc: the process.
        spawn_t: ``time.monotonic()`` just before it was started (CLOCK_MONOTONIC is shared by
            all processes, so children's timestamps are comparable).
        events: events received so far, by name (latest wins).
    """

    def __init__(
        self,
        procs: ProcessSet,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.spawn_t = time.monotonic()
        self.proc = procs.spawn(
            argv,
            log_path=log_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stop_signal=stop_signal,
        )
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._next_id = 0
        self.events: dict[str, dict[str, Any]] = {}
        self._replies: dict[int, dict[str, Any]] = {}
        reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        reader.start()

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if isinstance(msg, dict):
                self._lines.put(msg)
        self._lines.put(None)

    def _pump(self, timeout: float) -> bool:
        """Move one line from the reader into replies/events; False on timeout."""
        try:
            msg = self._lines.get(timeout=timeout)
        except queue.Empty:
            return False
        if msg is None:
            self._lines.put(None)  # keep the EOF marker for later callers
            raise BenchError(f"{self.name} exited (status {self.proc.poll()}); see {self.log_path}")
        if "event" in msg:
            self.events[str(msg["event"])] = msg
        elif "id" in msg:
            self._replies[int(msg["id"])] = msg
        return True

    def send(self, op: str, **args: Any) -> int:
        """Send a request without waiting; returns its id for :meth:`reply`.

        Raises:
            BenchError: the child is gone.
        """
        self._next_id += 1
        rid = self._next_id
        line = json.dumps({"id": rid, "op": op, **args}) + "\n"
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise BenchError(f"{self.name} is gone ({exc}); see {self.log_path}") from None
        return rid

    def reply(self, rid: int, *, timeout: float = 60.0, what: str = "request") -> dict[str, Any]:
        """Wait for the reply to request ``rid``.

        Raises:
            BenchError: the child failed the request, died, or did not answer in time.
        """
        deadline = time.monotonic() + timeout
        while rid not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no reply to {what!r} within {timeout:.0f} s")
            self._pump(min(left, 0.5))
        reply = self._replies.pop(rid)
        if not reply.get("ok"):
            raise BenchError(f"{self.name}: {what} failed: {reply.get('error')}")
        return reply

    def try_reply(
        self, rid: int, *, timeout: float, what: str = "request"
    ) -> dict[str, Any] | None:
        """Like :meth:`reply`, but None when there is no reply within ``timeout``."""
        deadline = time.monotonic() + timeout
        while rid not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._pump(min(left, 0.5))
        return self.reply(rid, timeout=0, what=what)

    def request(self, op: str, *, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        """Send a request and wait for its reply (see :meth:`send`, :meth:`reply`)."""
        return self.reply(self.send(op, **args), timeout=timeout, what=op)

    def wait_event(self, name: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the event ``name``.

        Raises:
            BenchError: the child died or the event did not come in time.
        """
        deadline = time.monotonic() + timeout
        while name not in self.events:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no {name!r} event within {timeout:.0f} s")
            self._pump(min(left, 0.5))
        return self.events[name]


# -- memory -------------------------------------------------------------------------------------


def _proc_kib(path: str, field: str) -> int | None:
    """The kB value of ``field`` in a /proc file (``status``, ``meminfo``), None if unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def status_kib(field: str, pid: int | str = "self") -> int | None:
    """``field`` (``VmRSS``, ``VmHWM``, ...) of ``/proc/<pid>/status`` in KiB, None if
    unreadable (default: this process)."""
    return _proc_kib(f"/proc/{pid}/status", field)


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (``VmRSS``), None if unreadable."""
    kib = status_kib("VmRSS", pid)
    return None if kib is None else kib / 1024


def hwm_mib(pid: int) -> float | None:
    """Peak resident set size of ``pid`` in MiB (``VmHWM``), None if unreadable."""
    kib = status_kib("VmHWM", pid)
    return None if kib is None else kib / 1024


def reset_hwm(pid: int) -> bool:
    """Reset ``pid``'s ``VmHWM`` to its current RSS (``/proc/<pid>/clear_refs``, value 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRss:
    """Peak RSS growth of some processes over a window: baseline RSS at start, then the kernel's
    high-water mark (reset at start) and a 20 ms sampler (for when the reset is refused).

    Use as a context manager; read :meth:`growth_mib` afterwards.
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.02) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.base: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self._hwm_ok: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRss:
        for name, pid in self.pids.items():
            base = rss_mib(pid) or 0.0
            self.base[name] = base
            self.peak[name] = base
            self._hwm_ok[name] = reset_hwm(pid)
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            for name, pid in self.pids.items():
                value = rss_mib(pid)
                if value is not None and value > self.peak[name]:
                    self.peak[name] = value

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for name, pid in self.pids.items():
            if self._hwm_ok[name]:
                hwm = hwm_mib(pid)
                if hwm is not None:
                    self.peak[name] = max(self.peak[name], hwm)

    def growth_mib(self, name: str) -> float:
        """Peak minus baseline for ``name``, in MiB."""
        return max(0.0, self.peak[name] - self.base[name])


# -- deterministic values -----------------------------------------------------------------------


def make_value_pool(seed: int = 1, size: int = 1 << 20) -> bytes:
    """A pool of ``size`` printable bytes (hex of random bytes, so about 2:1 compressible, like
    typical text values) from which values are cut."""
    return random.Random(seed).randbytes(size // 2).hex().encode()


def value_for(pool: bytes, i: int, size: int) -> bytes:
    """The ``i``-th value of ``size`` bytes: a pseudo-random window of ``pool`` plus the index,
    so values differ and every process derives the same one."""
    tag = b"%d:" % i
    start = (i * 7919) % (len(pool) - size)
    return tag + pool[start : start + size - len(tag)]


def key_for(i: int) -> str:
    """The ``i``-th key of a loaded state."""
    return f"k{i:010d}"


# -- raw baselines ------------------------------------------------------------------------------


def _block(chunk: int) -> bytes:
    return (make_value_pool(7, 1 << 16) * (chunk // (1 << 16) + 1))[:chunk]


def raw_write_fsync(path: Path, nbytes: int, *, chunk: int = MIB) -> float:
    """Sequentially write ``nbytes`` to a new file at ``path`` in ``chunk``-sized writes, fsync
    it and its directory; returns seconds. The file is removed afterwards."""
    block = _block(chunk)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = nbytes
        view = memoryview(block)
        while left > 0:
            n = os.write(fd, view[: min(chunk, left)])
            left -= n
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)
    elapsed = time.perf_counter() - t0
    path.unlink()
    return elapsed


def raw_loopback_copy(src: Path | None, dst: Path, nbytes: int, *, chunk: int = MIB) -> float:
    """Copy ``nbytes`` (of file ``src``, or generated data when None) over a loopback TCP
    connection into a new file ``dst``, then fsync it and its directory; returns seconds from
    connect to durable. Sender and receiver are threads (socket and file I/O release the GIL).
    The destination file is removed afterwards."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port)) as s:
                if src is not None:
                    with open(src, "rb") as f:
                        s.sendfile(f, 0, nbytes)
                else:
                    block = memoryview(_block(chunk))
                    left = nbytes
                    while left > 0:
                        n = min(chunk, left)
                        s.sendall(block[:n])
                        left -= n
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    t0 = time.perf_counter()
    sender = threading.Thread(target=send, name="raw-copy-sender", daemon=True)
    sender.start()
    conn, _ = listener.accept()
    listener.close()
    buf = bytearray(chunk)
    view = memoryview(buf)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with conn:
            got = 0
            while got < nbytes:
                n = conn.recv_into(view, min(chunk, nbytes - got))
                if n == 0:
                    break
                written = 0
                while written < n:
                    written += os.write(fd, view[written:n])
                got += n
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(dst.parent)
    elapsed = time.perf_counter() - t0
    sender.join()
    dst.unlink()
    if errors:
        raise BenchError(f"raw copy failed: {errors[0]!r}")
    if got != nbytes:
        raise BenchError(f"raw copy moved {got} of {nbytes} bytes")
    return elapsed


# -- etcd ---------------------------------------------------------------------------------------


class EtcdCluster:
    """A local 3-node etcd (Debian's etcd-server) on loopback, driven through its v3 JSON
    gateway (and the v2 API for ``kv_http``).

    Args:
        procs: the process set that owns the members.
        base: directory for data dirs and logs.
        snapshot_count: ``--snapshot-count`` (applied entries between snapshots).
        enable_v2: serve the v2 API.
        size: members.
    """

    def __init__(
        self,
        procs: ProcessSet,
        base: Path,
        *,
        snapshot_count: int = 100000,
        enable_v2: bool = False,
        size: int = 3,
    ) -> None:
        self.procs = procs
        self.base = base
        self.size = size
        self.snapshot_count = snapshot_count
        self.enable_v2 = enable_v2
        ports = free_ports(2 * size)
        self.client_ports = ports[:size]
        self.peer_ports = ports[size:]
        self.members: dict[int, subprocess.Popen[bytes]] = {}
        self.spawn_t: dict[int, float] = {}

    @staticmethod
    def available() -> str | None:
        """Path of the ``etcd`` binary, or None when not installed."""
        return shutil.which("etcd")

    def name(self, i: int) -> str:
        """Member name of node ``i`` (1-based)."""
        return f"n{i}"

    def client_url(self, i: int) -> str:
        """Client URL of node ``i``."""
        return f"http://127.0.0.1:{self.client_ports[i - 1]}"

    def start(self, i: int, *, state: str = "new") -> None:
        """Start member ``i`` (again)."""
        etcd = self.available()
        if etcd is None:
            raise BenchError("etcd is not installed")
        cluster = ",".join(
            f"{self.name(j)}=http://127.0.0.1:{self.peer_ports[j - 1]}"
            for j in range(1, self.size + 1)
        )
        argv = [
            etcd,
            "--name",
            self.name(i),
            "--data-dir",
            str(self.base / f"etcd-{i}"),
            "--listen-client-urls",
            self.client_url(i),
            "--advertise-client-urls",
            self.client_url(i),
            "--listen-peer-urls",
            f"http://127.0.0.1:{self.peer_ports[i - 1]}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{self.peer_ports[i - 1]}",
            "--initial-cluster",
            cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            "trioraft-bench",
            "--snapshot-count",
            str(self.snapshot_count),
            "--quota-backend-bytes",
            str(8 << 30),
            "--log-level",
            "warn",
        ]
        if self.enable_v2:
            argv += ["--enable-v2=true"]
        self.spawn_t[i] = time.monotonic()
        self.members[i] = self.procs.spawn(argv, log_path=self.base / f"etcd-{i}.log")

    def start_all(self) -> None:
        """Start every member and wait for a leader."""
        for i in range(1, self.size + 1):
            self.start(i)
        self.wait_leader()

    def stop(self, i: int) -> None:
        """Stop member ``i`` gracefully."""
        proc = self.members.get(i)
        if proc is not None:
            ProcessSet.stop(proc)

    def pid(self, i: int) -> int:
        """Process id of member ``i``."""
        return self.members[i].pid

    def post(self, i: int, path: str, body: dict[str, Any], timeout: float = 30.0) -> Any:
        """POST ``body`` as JSON to the v3 gateway of node ``i``; returns the decoded reply.

        Raises:
            OSError: connection problems; BenchError: an HTTP error status.
        """
        import http.client  # only the benchmark driver talks HTTP: nodes import this module

        conn = http.client.HTTPConnection("127.0.0.1", self.client_ports[i - 1], timeout=timeout)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise BenchError(f"etcd {path} -> {resp.status}: {data[:200]!r}")
        return json.loads(data)

    def status(self, i: int) -> dict[str, Any] | None:
        """``/v3/maintenance/status`` of node ``i`` (None while unreachable)."""
        try:
            reply: dict[str, Any] = self.post(i, "/v3/maintenance/status", {}, timeout=2.0)
            return reply
        except (OSError, BenchError, ValueError):
            return None

    def leader(self, among: Sequence[int] | None = None) -> int | None:
        """The 1-based index of the leader as seen by a live node, or None."""
        for i in among or range(1, self.size + 1):
            st = self.status(i)
            if st and int(st.get("leader", 0)):
                leader_id = str(st["leader"])
                for j in range(1, self.size + 1):
                    sj = self.status(j)
                    if sj and str(sj.get("header", {}).get("member_id")) == leader_id:
                        return j
        return None

    def wait_leader(self, timeout: float = 60.0, among: Sequence[int] | None = None) -> int:
        """Wait until a leader is known; returns its index."""
        result: int = wait_until(
            "an etcd leader", lambda: self.leader(among), timeout=timeout, interval=0.2
        )
        return result

    @staticmethod
    def b64(data: bytes | str) -> str:
        """Base64 for the JSON gateway."""
        raw = data.encode() if isinstance(data, str) else data
        return base64.b64encode(raw).decode()

    def put_many(self, i: int, pairs: Sequence[tuple[str, bytes]]) -> None:
        """One transaction putting every pair."""
        ops = [{"requestPut": {"key": self.b64(k), "value": self.b64(v)}} for k, v in pairs]
        self.post(i, "/v3/kv/txn", {"success": ops})

    def put(self, i: int, key: str, value: bytes) -> None:
        """One put."""
        self.post(i, "/v3/kv/put", {"key": self.b64(key), "value": self.b64(value)})

    def metric_sum(self, i: int, name: str) -> float | None:
        """Sum of the samples of Prometheus metric ``name`` on node ``i`` (None if unreachable).

        Labelled counters appear only once incremented, so an absent metric counts as 0."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.client_ports[i - 1], timeout=5)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode("utf-8", "replace")
        except OSError:
            return None
        finally:
            conn.close()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                try:
                    total += float(line.rsplit(" ", 1)[1])
                except ValueError:
                    continue
        return total

    def has_key(self, i: int, key: str) -> bool:
        """Whether node ``i`` serves ``key`` from its local state (serializable read)."""
        try:
            reply = self.post(
                i, "/v3/kv/range", {"key": self.b64(key), "serializable": True}, timeout=2.0
            )
        except (OSError, BenchError, ValueError):
            return False
        return int(reply.get("count", 0) or 0) > 0


# -- results ------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of already sorted values (nearest rank), None when empty."""
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def ratio(num: float | None, den: float | None, digits: int = 3) -> float | None:
    """``num / den`` rounded, or None when either is missing or ``den`` is zero."""
    if num is None or den is None or den == 0:
        return None
    return round(num / den, digits)


def rounded(value: float | None, digits: int = 3) -> float | None:
    """``round`` that passes None through."""
    return None if value is None else round(value, digits)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _disk_of(path: Path) -> dict[str, Any]:
    """Device, file system and kind of the disk holding ``path``."""
    info: dict[str, Any] = {}
    try:
        best = ""
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if str(path.resolve()).startswith(mnt) and len(mnt) > len(best):
                    best = mnt
                    info = {"device": dev, "mount": mnt, "fs": fstype}
        dev = str(info.get("device", ""))
        name = os.path.basename(dev).rstrip("0123456789") if dev.startswith("/dev/") else ""
        if name.startswith(("nvme", "mmcblk")):
            name = os.path.basename(dev).split("p")[0]
        sysdir = Path("/sys/block") / name
        if name and sysdir.exists():
            rot = (sysdir / "queue" / "rotational").read_text().strip()
            info["rotational"] = rot == "1"
            model = sysdir / "device" / "model"
            info["model"] = model.read_text().strip() if model.exists() else None
            vendor = sysdir / "device" / "vendor"
            if vendor.exists():
                info["vendor"] = vendor.read_text().strip()
            if name.startswith("vd"):
                info["kind"] = "virtio block device (VM)"
            size = (sysdir / "size").read_text().strip()
            info["size_gib"] = round(int(size) * 512 / (1 << 30), 1)
    except (OSError, ValueError):
        pass
    return info


def _git_state() -> dict[str, Any]:
    """The commit the code under test comes from, and whether the tree had local changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "trioraft", "examples"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit or None, "library_changes_uncommitted": bool(dirty)}


def machine_info(data_path: Path | None = None) -> dict[str, Any]:
    """A description of the machine the figures come from (and the code's git commit)."""
    mem_kib = _proc_kib("/proc/meminfo", "MemTotal")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_gib": None if mem_kib is None else round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "disk": _disk_of(data_path or Path(tempfile.gettempdir())),
        "loadavg_at_start": [round(x, 2) for x in load],
        "git": _git_state(),
    }


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: numbers rounded, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print an aligned plain-text table to stdout."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    print()
    print(title)
    line = "  ".join(
        h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(headers)
    )
    print(line)
    print("-" * len(line))
    for row in cells:
        print(
            "  ".join(
                c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)
            )
        )


def write_json(path: str | None, doc: dict[str, Any]) -> None:
    """Write ``doc`` as indented JSON to ``path`` (nothing when None)."""
    if not path:
        return
    p = Path(path)
    if p.parent != Path(""):
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    tmp.replace(p)


# -- clusters of node scripts -------------------------------------------------------------------


class NodeCluster:
    """A cluster of node-script processes (``benchmarks.trioraft_node`` or
    ``benchmarks.pysyncobj_node``) on loopback, each a :class:`ControlledProcess`.

    Args:
        procs: owns the processes.
        base: data dirs (``<label>-<id>``) and logs go here.
        module: the node script's module.
        label: for names and paths.
        size: number of nodes.
        extra_args: appended to every node's command line.
    """

    def __init__(
        self,
        procs: ProcessSet,
        base: Path,
        module: str,
        *,
        label: str,
        size: int = 3,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.procs = procs
        self.base = base
        self.module = module
        self.label = label
        self.size = size
        self.extra_args = list(extra_args)
        ports = free_ports(size)
        self.peers = {i: f"127.0.0.1:{ports[i - 1]}" for i in range(1, size + 1)}
        self.nodes: dict[int, ControlledProcess] = {}
        # Profiling aid: a command prefix for every node, e.g.
        # TRIORAFT_BENCH_WRAPPER="py-spy record -r 250 -f raw -o {log}.pyspy --"
        self.wrapper = os.environ.get("TRIORAFT_BENCH_WRAPPER", "").split()

    def data_dir(self, i: int) -> Path:
        """Data directory of node ``i``."""
        return self.base / f"{self.label}-{i}"

    def start(self, i: int, *, wait_ready: bool = True, timeout: float = 60.0) -> ControlledProcess:
        """Start node ``i`` (again) and, by default, wait for its ``ready`` event."""
        peers = ",".join(f"{j}={a}" for j, a in self.peers.items())
        log_path = self.base / f"{self.label}-{i}.log"
        wrapper = [w.replace("{log}", str(log_path)) for w in self.wrapper]
        argv = [
            *wrapper,
            PYTHON,
            "-m",
            self.module,
            "--id",
            str(i),
            "--peers",
            peers,
            "--data-dir",
            str(self.data_dir(i)),
            *self.extra_args,
        ]
        node = ControlledProcess(
            self.procs,
            f"{self.label}-{i}",
            argv,
            log_path=log_path,
            stop_signal=signal.SIGINT if wrapper else signal.SIGTERM,
        )
        self.nodes[i] = node
        if wait_ready:
            node.wait_event("ready", timeout=timeout)
        return node

    def start_all(self) -> None:
        """Start every node (in parallel) and wait until each is ready."""
        for i in range(1, self.size + 1):
            self.start(i, wait_ready=False)
        for i in range(1, self.size + 1):
            self.nodes[i].wait_event("ready", timeout=60)

    def stop(self, i: int, *, kill: bool = False) -> None:
        """Stop node ``i`` (SIGTERM, or SIGKILL when ``kill``)."""
        node = self.nodes.pop(i, None)
        if node is None:
            return
        if self.wrapper and not kill and node.proc.stdin is not None:
            # A wrapper (profiler) must see its child exit on its own to write its output:
            # stdin EOF makes the node shut down cleanly.
            with contextlib.suppress(OSError):
                node.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=30)
        ProcessSet.stop(node.proc, kill=kill)

    def live(self) -> list[int]:
        """Ids of running nodes."""
        return [i for i, n in self.nodes.items() if n.proc.poll() is None]

    def status(self, i: int) -> dict[str, Any]:
        """The ``status`` op of node ``i``."""
        return self.nodes[i].request("status", timeout=30)

    def leader(self) -> int | None:
        """The leader every live node agrees on (and that says it leads), else None."""
        seen = set()
        for i in self.live():
            st = self.status(i)
            seen.add(int(st.get("leader") or 0))
        if len(seen) != 1:
            return None
        lead = seen.pop()
        if lead == 0 or lead not in self.nodes:
            return None
        return lead if self.status(lead)["role"] == "leader" else None

    def wait_leader(self, timeout: float = 60.0) -> int:
        """Wait until the live nodes agree on a leader; returns its id."""
        result: int = wait_until(
            f"a {self.label} leader", self.leader, timeout=timeout, interval=0.1
        )
        return result
