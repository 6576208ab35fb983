"""The ``trioraft`` command: a guided demo cluster and tools to look inside a node.

Subcommands::

    trioraft demo [--tour-only]             a local 3-node KV cluster and a narrated tour
    trioraft status URL...                  a table of nodes from their /-/status
    trioraft wal dump DIR                   the records of a node's write-ahead log
    trioraft snapshot list DIR              the snapshots a node holds
    trioraft snapshot inspect DIR [INDEX]   one snapshot's metadata and files
    trioraft snapshot verify DIR            check every snapshot file's CRC32C (exit 1 on damage)

``DIR`` is a node's data directory (``kv-1``) or directly its ``wal``/``snap`` sub-directory.
The storage tools only read: they take no lock, repair nothing and rename nothing, so they are
safe to run next to a live node (a record being written may show as a torn tail).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["HttpResult", "ProcessCluster", "fetch_status", "http_request", "main"]


# -- small HTTP client (stdlib; the CLI has no event loop) ---------------------------------------


class HttpResult:
    """Status code and body of one HTTP exchange (``status`` 0 when no answer came)."""

    def __init__(self, status: int, body: bytes, error: str = "") -> None:
        self.status = status
        self.body = body
        self.error = error

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (replacing invalid bytes)."""
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"HttpResult({self.status}, {self.body[:80]!r}, {self.error!r})"


def http_request(
    method: str, url: str, body: bytes | None = None, *, timeout: float = 10.0
) -> HttpResult:
    """Perform one HTTP request; never raises for HTTP or connection errors.

    Returns:
        the answer; ``status`` is 0 and ``error`` says why when there was none.
    """
    try:
        req = urllib.request.Request(url, data=body, method=method)  # a bad URL raises here
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpResult(int(resp.status), resp.read())
    except urllib.error.HTTPError as exc:
        return HttpResult(int(exc.code), exc.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return HttpResult(0, b"", str(reason))


def _base_url(url: str) -> str:
    text = url.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    return text


def fetch_status(url: str, *, timeout: float = 3.0) -> dict[str, Any] | None:
    """The ``/-/status`` document of the node at ``url``, or None when unreachable."""
    base = _base_url(url)
    if not base.endswith("/-/status"):
        base += "/-/status"
    res = http_request("GET", base, timeout=timeout)
    if res.status != 200:
        return None
    try:
        doc = json.loads(res.body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


# -- trioraft status -----------------------------------------------------------------------------

_STATUS_COLUMNS = (
    ("ID", "id"),
    ("ROLE", "role"),
    ("TERM", "term"),
    ("LEADER", "leader"),
    ("COMMIT", "commit"),
    ("APPLIED", "applied"),
    ("FIRST", "first_index"),
    ("LAST", "last_index"),
    ("SNAPSHOT", "snapshot_index"),
    ("INSTALLED", "snapshots_installed"),
    ("SENT", "snapshots_sent"),
)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def status_table(urls: Sequence[str], *, timeout: float = 3.0) -> tuple[str, int]:
    """The status table of ``urls`` and how many could not be reached."""
    rows: list[list[str]] = [["ENDPOINT", *(c for c, _ in _STATUS_COLUMNS)]]
    failed = 0
    for url in urls:
        doc = fetch_status(url, timeout=timeout)
        if doc is None:
            failed += 1
            rows.append([url, "-", "unreachable", *("-" for _ in _STATUS_COLUMNS[2:])])
            continue
        rows.append([url, *(str(doc.get(key, "-")) for _, key in _STATUS_COLUMNS)])
    return format_table(rows), failed


def _cmd_status(args: argparse.Namespace) -> int:
    table, failed = status_table(args.urls, timeout=args.timeout)
    print(table)
    if failed:
        print(f"\n{failed} of {len(args.urls)} endpoint(s) unreachable", file=sys.stderr)
        return 1
    return 0


# -- storage tools -------------------------------------------------------------------------------


def _data_paths(directory: str) -> tuple[Path, Path]:
    """(wal dir, snap dir) for a data dir, or a wal/snap dir given directly."""
    p = Path(directory)
    if not p.is_dir():
        raise SystemExit(f"trioraft: {directory}: not a directory")
    if (p / "wal").is_dir() or (p / "snap").is_dir():
        return p / "wal", p / "snap"
    if p.name == "snap":
        return p.parent / "wal", p
    return p, p.parent / "snap"


def _cmd_wal_dump(args: argparse.Namespace) -> int:
    wal_dir, _ = _data_paths(args.dir)
    return wal_dump(str(wal_dir), sys.stdout, data_limit=args.data_bytes)


def _cmd_snapshot(args: argparse.Namespace) -> int:
    _, snap_dir = _data_paths(args.dir)
    if args.snap_cmd == "list":
        return snapshot_list(str(snap_dir), sys.stdout)
    if args.snap_cmd == "inspect":
        return snapshot_inspect(str(snap_dir), args.index, sys.stdout)
    return snapshot_verify(str(snap_dir), sys.stdout)


def _short(data: bytes, limit: int) -> str:
    shown = data[:limit]
    text = repr(shown)
    return text + ("..." if len(data) > limit else "")


def _describe_entry(entry: Any, data_limit: int) -> str:
    from trioraft.core.types import EntryKind

    head = f"{entry.index:>10}  term={entry.term:<5}"
    if entry.kind == EntryKind.CONF_CHANGE:
        from trioraft.codec import DecodeError, decode_conf_change

        try:
            cc = decode_conf_change(entry.data)
        except DecodeError as exc:
            return f"{head} conf-change <undecodable: {exc}>"
        parts = [f"{c.type.name.lower()}({c.node_id})" for c in cc.changes] or ["leave-joint"]
        ctx = f" context={_short(cc.context, data_limit)}" if cc.context else ""
        return f"{head} conf-change {' '.join(parts)}{ctx}"
    if not entry.data:
        return f"{head} no-op"
    return f"{head} normal {len(entry.data)} bytes {_short(entry.data, data_limit)}"


def wal_dump(wal_dir: str, out: TextIO, *, data_limit: int = 32) -> int:
    """Print every record of the WAL in ``wal_dir`` without modifying anything.

    Each segment's chained CRC is checked frame by frame. Returns the exit status: 0 when the
    WAL is intact (a torn tail at the very end of the last segment is reported, not counted:
    a live node may be writing it, and the node repairs it when it opens the WAL), 1 on damage,
    2 when the directory holds no WAL.
    """
    import re

    from trioraft.codec import DecodeError
    from trioraft.storage import records

    # Records are recognised by shape rather than by class so the tool keeps working while the
    # record set evolves: a header has ``seq``, a marker has ``meta``, entries come with
    # ``count``/``first_index``, and any record may carry a ``hard_state``.
    frame_header = records.FRAME_HEADER
    frame_crc = records.frame_crc
    decode_record = records.decode_record
    check_entries: Callable[[Any], str | None] = getattr(records, "check_entries", lambda rec: None)
    unpack_entries: Callable[[Any], list[Any]] = records.unpack_entries

    seg_re = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
    try:
        listing = os.listdir(wal_dir)
        names = sorted(n for n in listing if seg_re.match(n))
        # zero-filled ahead of use; renamed into a segment only once it has its header
        preparing = sorted(n for n in listing if n.endswith(".wal.prepare"))
    except OSError as exc:
        print(f"trioraft wal dump: {wal_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not names:
        print(f"trioraft wal dump: no WAL segments in {wal_dir}", file=sys.stderr)
        return 2
    print(f"WAL {wal_dir}: {len(names)} segment(s)", file=out)
    damaged = 0
    entries = hard_states = markers = 0
    first_index = last_index = None
    last_hs = None
    prev_seg_crc: int | None = None
    for pos, name in enumerate(names):
        path = os.path.join(wal_dir, name)
        try:
            with open(path, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            # a running node released it between the listing and now
            print(f"segment {name}: removed meanwhile (is a node running on it?)", file=out)
            continue
        except OSError as exc:
            print(f"segment {name}: DAMAGE: cannot read: {exc.strerror or exc}", file=out)
            damaged += 1
            continue
        print(f"segment {name} ({len(buf)} bytes)", file=out)
        off = 0
        crc = 0
        view = memoryview(buf)
        while off < len(buf):
            problem = None
            torn = False
            if len(buf) - off < frame_header.size:
                problem, torn = "incomplete frame header", True
            else:
                length, stored = frame_header.unpack_from(buf, off)
                end = off + frame_header.size + length
                if length == 0 and stored == 0 and not buf[off:].strip(b"\0"):
                    # zeros after the last frame: space the WAL reserved or zero-filled ahead
                    # of its writes (a segment is pre-zeroed whole before it is used)
                    print(f"  @{off:<10} end ({len(buf) - off} reserved bytes)", file=out)
                    break
                if length == 0:
                    # as the WAL judges it: the start of the last write lost, later parts not
                    problem, torn = "zero-length frame", True
                elif end > len(buf):
                    problem, torn = f"frame of {length} bytes runs past the end of the file", True
                elif frame_crc(view[off : off + 4], view[off + 8 : end], crc) != stored:
                    problem = "CRC mismatch"
            if problem is None:
                try:
                    rec: Any = decode_record(buf[off + 8 : end])
                except DecodeError as exc:
                    problem = f"undecodable record: {exc}"
            if problem is not None:
                last_segment = pos == len(names) - 1
                if torn and last_segment:
                    print(
                        f"  @{off:<10} torn tail: {problem} (repaired when the node opens it)",
                        file=out,
                    )
                else:
                    print(f"  @{off:<10} DAMAGE: {problem}", file=out)
                    damaged += 1
                break
            if hasattr(rec, "seq"):
                link = ""
                if prev_seg_crc is not None and rec.prev_crc != prev_seg_crc:
                    link = " DAMAGE: CRC link to the previous segment broken"
                    damaged += 1
                print(
                    f"  @{off:<10} header seq={rec.seq} first_index={rec.first_index}{link}",
                    file=out,
                )
            elif hasattr(rec, "meta"):
                markers += 1
                m = rec.meta
                voters = ",".join(map(str, sorted(m.conf.voters))) or "-"
                extra = " reset" if getattr(rec, "reset", False) else ""
                print(
                    f"  @{off:<10} snapshot-marker index={m.index} term={m.term} "
                    f"voters={voters}{extra}",
                    file=out,
                )
            count = int(getattr(rec, "count", 0) or 0)
            if count > 0 and not hasattr(rec, "meta"):
                bad = check_entries(rec)
                if bad is not None:
                    print(f"  @{off:<10} DAMAGE: {bad}", file=out)
                    damaged += 1
                    break
                last = rec.first_index + count - 1
                print(f"  @{off:<10} entries {rec.first_index}..{last}", file=out)
                for entry in unpack_entries(rec):
                    print("  " + _describe_entry(entry, data_limit), file=out)
                entries += count
                if first_index is None:
                    first_index = rec.first_index
                last_index = last
            hs = getattr(rec, "hard_state", None)
            if hs is not None:
                hard_states += 1
                last_hs = hs
                print(
                    f"  @{off:<10} hard-state term={hs.term} vote={hs.vote} commit={hs.commit}",
                    file=out,
                )
            crc = frame_crc(view[off : off + 4], view[off + 8 : end], crc)
            off = end
        prev_seg_crc = crc
    for name in preparing:
        size = os.path.getsize(os.path.join(wal_dir, name))
        print(
            f"{name} ({size} bytes): next segment being zero-filled, not part of the WAL yet",
            file=out,
        )
    span = "-" if first_index is None else f"{first_index}..{last_index}"
    print(
        f"summary: {entries} entries written ({span}), {hard_states} hard states, "
        f"{markers} snapshot markers",
        file=out,
    )
    if last_hs is not None:
        print(
            f"last hard state: term={last_hs.term} vote={last_hs.vote} commit={last_hs.commit}",
            file=out,
        )
    if damaged:
        print(f"{damaged} damaged place(s) found", file=out)
        return 1
    return 0


def _scan_snapshots(snap_dir: str) -> tuple[list[tuple[str, Any]], list[str]]:
    """Snapshot directories of ``snap_dir``, newest first, each with its loaded metadata or the
    StorageCorrupted error; and the names of quarantined (``.broken``) ones."""
    import re

    from trioraft.errors import StorageCorrupted
    from trioraft.storage.fs import REAL_FS
    from trioraft.storage.snapshots import load_snapshot

    pattern = re.compile(r"^(\d{20})-(\d{20})$")
    names = sorted((n for n in os.listdir(snap_dir) if pattern.match(n)), reverse=True)
    broken = sorted(n for n in os.listdir(snap_dir) if n.endswith(".broken"))
    out: list[tuple[str, Any]] = []
    for name in names:
        path = os.path.join(snap_dir, name)
        try:
            out.append((path, load_snapshot(REAL_FS, path)))
        except StorageCorrupted as exc:
            if os.path.isdir(path):
                out.append((path, exc))
            # else a running node's retention deleted it after the listing: not damage
    return out, broken


def _ids(nodes: Any) -> str:
    return ",".join(str(n) for n in sorted(nodes)) or "-"


def _open_snap_dir(snap_dir: str, what: str) -> tuple[list[tuple[str, Any]], list[str]] | None:
    try:
        return _scan_snapshots(snap_dir)
    except OSError as exc:
        print(f"trioraft snapshot {what}: {snap_dir}: {exc.strerror or exc}", file=sys.stderr)
        return None


def snapshot_list(snap_dir: str, out: TextIO) -> int:
    """Print the snapshots in ``snap_dir``, newest first (metadata only; see verify)."""
    from trioraft.errors import StorageCorrupted

    scanned = _open_snap_dir(snap_dir, "list")
    if scanned is None:
        return 2
    snaps, broken = scanned
    rows = [["INDEX", "TERM", "FILES", "BYTES", "VOTERS", "LEARNERS", "DIRECTORY"]]
    for path, meta in snaps:
        if isinstance(meta, StorageCorrupted):
            rows.append(["?", "?", "?", "?", "?", "?", f"{path}  (unreadable: {meta.detail})"])
            continue
        rows.append(
            [
                str(meta.index),
                str(meta.term),
                str(len(meta.files)),
                str(meta.total_bytes),
                _ids(meta.conf.voters | meta.conf.voters_outgoing),
                _ids(meta.conf.learners | meta.conf.learners_next),
                path,
            ]
        )
    if len(rows) == 1:
        print(f"no snapshots in {snap_dir}", file=out)
    else:
        print(format_table(rows), file=out)
    for name in broken:
        print(f"quarantined: {os.path.join(snap_dir, name)}", file=out)
    return 0


def snapshot_inspect(snap_dir: str, index: int | None, out: TextIO) -> int:
    """Print one snapshot's metadata and files (the newest when ``index`` is None) and whether
    its files match their checksums. Returns 1 when it is damaged, 2 when not found."""
    from trioraft.errors import StorageCorrupted
    from trioraft.storage.fs import REAL_FS
    from trioraft.storage.snapshots import SnapshotReader

    scanned = _open_snap_dir(snap_dir, "inspect")
    if scanned is None:
        return 2
    snaps, _ = scanned
    chosen = [
        (p, m)
        for p, m in snaps
        if index is None or (not isinstance(m, StorageCorrupted) and m.index == index)
    ]
    if not chosen:
        what = "no snapshots" if index is None else f"no snapshot at index {index}"
        print(f"trioraft snapshot inspect: {what} in {snap_dir}", file=sys.stderr)
        return 2
    path, meta = chosen[0]
    print(f"snapshot   {path}", file=out)
    if isinstance(meta, StorageCorrupted):
        print(f"DAMAGED    {meta}", file=out)
        return 1
    conf = meta.conf
    print(f"index      {meta.index}", file=out)
    print(f"term       {meta.term}", file=out)
    print(f"voters     {_ids(conf.voters)}", file=out)
    print(f"learners   {_ids(conf.learners)}", file=out)
    if conf.joint:
        print(f"outgoing   {_ids(conf.voters_outgoing)} (joint configuration)", file=out)
        print(f"learners_next {_ids(conf.learners_next)}  auto_leave {conf.auto_leave}", file=out)
    print(f"user_meta  {meta.user_meta!r}", file=out)
    print(f"files      {len(meta.files)} ({meta.total_bytes} bytes)", file=out)
    for info in meta.files:
        print(f"  {info.name:<30} {info.size:>12} bytes  crc32c {info.crc32c:#010x}", file=out)
    try:
        SnapshotReader(REAL_FS, meta).verify()
    except StorageCorrupted as exc:
        print(f"DAMAGED    {exc}", file=out)
        return 1
    print("checksums  ok", file=out)
    return 0


def snapshot_verify(snap_dir: str, out: TextIO) -> int:
    """Re-read every file of every snapshot and check its size and CRC32C.

    Returns:
        0 when every snapshot is intact (or there is none), 1 when any is damaged, 2 when
        ``snap_dir`` cannot be read.
    """
    from trioraft.errors import StorageCorrupted
    from trioraft.storage.fs import REAL_FS
    from trioraft.storage.snapshots import SnapshotReader

    scanned = _open_snap_dir(snap_dir, "verify")
    if scanned is None:
        return 2
    snaps, broken = scanned
    damaged = 0
    for path, meta in snaps:
        if isinstance(meta, StorageCorrupted):
            damaged += 1
            print(f"DAMAGED  {path}: {meta}", file=out)
            continue
        try:
            SnapshotReader(REAL_FS, meta).verify()
        except StorageCorrupted as exc:
            if not os.path.isdir(path):
                print(f"gone     {path}: removed meanwhile (is a node running on it?)", file=out)
                continue
            damaged += 1
            print(f"DAMAGED  {path}: {exc}", file=out)
            continue
        print(
            f"ok       {path} (index {meta.index}, term {meta.term}, "
            f"{len(meta.files)} files, {meta.total_bytes} bytes)",
            file=out,
        )
    for name in broken:
        print(f"note     {os.path.join(snap_dir, name)} was quarantined earlier", file=out)
    if not snaps:
        print(f"no snapshots in {snap_dir}", file=out)
    if damaged:
        print(f"{damaged} of {len(snaps)} snapshot(s) damaged", file=out)
        return 1
    return 0


# -- a local cluster of example processes ---------------------------------------------------------


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that are free now.

    Ports are chosen below the kernel's ephemeral range when possible: outgoing connections
    (the nodes' own peer connections, for instance) take their local ports from that range and
    could otherwise grab a port reserved here before its node binds it.
    """
    import random

    low, _ = _ephemeral_range()
    rng = random.SystemRandom()
    chosen: list[int] = []
    socks: list[socket.socket] = []
    try:
        attempts = 0
        while len(chosen) < n and low > 11000 and attempts < 50 * n:
            attempts += 1
            port = rng.randrange(10000, low)
            if port in chosen:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            chosen.append(port)
        while len(chosen) < n:  # fall back to ports the kernel picks
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            chosen.append(s.getsockname()[1])
        return chosen
    finally:
        for s in socks:
            s.close()


def find_source_root() -> Path:
    """The directory holding the ``examples`` package (the source checkout).

    Raises:
        FileNotFoundError: trioraft was installed without its source tree.
    """
    candidates = [Path(__file__).resolve().parent.parent, Path.cwd()]
    for root in candidates:
        if (root / "examples" / "kv" / "__main__.py").is_file():
            return root
    raise FileNotFoundError(
        "the examples/ directory was not found next to trioraft (run from a source checkout)"
    )


def _linux_parent_death_signal() -> Callable[[], None] | None:
    """A preexec hook so children die with the thread that started them (Linux only).

    Linux sends the parent-death signal when the *thread* that forked the child exits, not
    only when the whole process does: start nodes from a thread that outlives them (the main
    thread), or they get SIGTERM when a short-lived starting thread ends."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no libc
        return None

    def hook() -> None:
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)

    return hook


class NodeProcess:
    """One example node run as a subprocess."""

    def __init__(self, node_id: int, http_port: int, raft_port: int, data_dir: Path) -> None:
        self.id = node_id
        self.http_port = http_port
        self.raft_port = raft_port
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"node-{node_id}.log"

    @property
    def url(self) -> str:
        """The node's HTTP base URL."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def raft_url(self) -> str:
        """The node's raft URL."""
        return f"http://127.0.0.1:{self.raft_port}"

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The end of the node's log file."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcessCluster:
    """Runs example nodes as local subprocesses on loopback ports (for the demo and e2e tests).

    Args:
        workdir: where data dirs and logs go.
        size: initial number of nodes.
        example: ``"kv"`` or ``"counter"``.
        extra_args: flags passed to every node (e.g. ``["--snapshot-entries", "100"]``).
        capacity: how many node slots (ports) to reserve, for nodes added later.
    """

    def __init__(
        self,
        workdir: Path,
        size: int = 3,
        *,
        example: str = "kv",
        extra_args: Sequence[str] = (),
        capacity: int | None = None,
        python: str = sys.executable,
    ) -> None:
        self.workdir = workdir
        self.size = size
        self.example = example
        self.extra_args = list(extra_args)
        self.python = python
        self.root = find_source_root()
        cap = capacity or size + 2
        ports = free_ports(2 * cap)
        self.nodes: dict[int, NodeProcess] = {
            i: NodeProcess(i, ports[2 * (i - 1)], ports[2 * (i - 1) + 1], workdir / f"node-{i}")
            for i in range(1, cap + 1)
        }

    def cluster_flag(self, upto: int) -> str:
        """The ``--cluster`` value naming nodes 1..upto."""
        return ",".join(self.nodes[i].raft_url for i in range(1, upto + 1))

    def command(self, node_id: int, *, join: bool = False, extra: Sequence[str] = ()) -> list[str]:
        """The command line that starts node ``node_id``."""
        node = self.nodes[node_id]
        upto = max(self.size, node_id)
        cmd = [
            self.python,
            "-m",
            f"examples.{self.example}",
            "--id",
            str(node_id),
            "--cluster",
            self.cluster_flag(upto),
            "--port",
            str(node.http_port),
            "--data-dir",
            str(node.data_dir),
            *self.extra_args,
            *extra,
        ]
        if join:
            cmd.append("--join")
        return cmd

    def start(self, node_id: int, *, join: bool = False, extra: Sequence[str] = ()) -> NodeProcess:
        """Start node ``node_id`` (its log goes to ``<workdir>/node-<id>.log``).

        The node gets SIGTERM when the calling thread exits (Linux's parent-death signal is
        per thread): call this from a thread that outlives the node, such as the main one."""
        node = self.nodes[node_id]
        if node.alive():
            return node
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.root), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(
                self.command(node_id, join=join, extra=extra),
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches only the demo
                preexec_fn=_linux_parent_death_signal(),
            )
        return node

    def start_all(self) -> None:
        """Start nodes 1..size."""
        for i in range(1, self.size + 1):
            self.start(i)

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL) to a node and reap it."""
        node = self.nodes[node_id]
        if node.proc is None:
            return
        if node.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(sig)
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    def stop(self, node_id: int) -> None:
        """Stop a node gracefully (SIGTERM, then SIGKILL after 10 s)."""
        self.kill(node_id, signal.SIGTERM)

    def stop_all(self) -> None:
        """Stop every node started (SIGTERM to all, then wait; SIGKILL stragglers)."""
        running = [n for n in self.nodes.values() if n.alive()]
        for n in running:
            assert n.proc is not None
            with contextlib.suppress(ProcessLookupError):
                n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for n in running:
            assert n.proc is not None
            try:
                n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()

    def __enter__(self) -> ProcessCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    # -- observing ---------------------------------------------------------------------------
    def status(self, node_id: int, timeout: float = 2.0) -> dict[str, Any] | None:
        """The node's status document, or None."""
        if not self.nodes[node_id].alive():
            return None
        return fetch_status(self.nodes[node_id].url, timeout=timeout)

    def wait_for(
        self, what: str, predicate: Callable[[], Any], timeout: float = 30.0, poll: float = 0.05
    ) -> Any:
        """Poll ``predicate`` until it returns something truthy (bounded).

        Raises:
            TimeoutError: with ``what`` and the tails of the node logs.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}\n{self.logs_digest()}")
            time.sleep(poll)

    def logs_digest(self, lines: int = 15) -> str:
        """The tails of every started node's log (for error messages)."""
        out = []
        for n in self.nodes.values():
            if n.proc is not None:
                state = "running" if n.alive() else f"exited {n.proc.returncode}"
                out.append(f"--- node {n.id} ({state}) ---\n{n.log_tail(lines)}")
        return "\n".join(out)

    def wait_ready(self, node_id: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the node answers ``/-/status``.

        Raises:
            RuntimeError: the process exited.
        """

        def ready() -> dict[str, Any] | None:
            if not self.nodes[node_id].alive():
                raise RuntimeError(
                    f"node {node_id} exited during start-up\n{self.nodes[node_id].log_tail()}"
                )
            return self.status(node_id)

        doc: dict[str, Any] = self.wait_for(f"node {node_id} to serve", ready, timeout)
        return doc

    def leader(self, among: Sequence[int] | None = None) -> int | None:
        """The id of a node that reports itself leader (the highest term wins), or None."""
        best: tuple[int, int] | None = None
        for i in among or [n.id for n in self.nodes.values() if n.alive()]:
            st = self.status(i)
            if st and st.get("role") == "leader" and (best is None or st["term"] > best[0]):
                best = (int(st["term"]), i)
        return None if best is None else best[1]

    def wait_leader(self, among: Sequence[int] | None = None, timeout: float = 30.0) -> int:
        """Wait until some node is leader and return its id."""
        leader: int = self.wait_for("a leader", lambda: self.leader(among), timeout)
        return leader

    def url(self, node_id: int, path: str = "/") -> str:
        """The URL of ``path`` on node ``node_id``."""
        return self.nodes[node_id].url + path

    def put(self, node_id: int, key: str, value: bytes, timeout: float = 10.0) -> HttpResult:
        """``PUT /key`` on a node."""
        return http_request("PUT", self.url(node_id, "/" + key), value, timeout=timeout)

    def get(self, node_id: int, key: str, *, serializable: bool = False) -> HttpResult:
        """``GET /key`` on a node."""
        suffix = "?serializable=true" if serializable else ""
        return http_request("GET", self.url(node_id, "/" + key + suffix))


# -- trioraft demo --------------------------------------------------------------------------------


class _Narrator:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.step = 0
        self.color = out.isatty() and os.environ.get("NO_COLOR") is None
        self._last_bar = ""

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def title(self, text: str) -> None:
        self.step += 1
        print(self._c("1;36", f"\n== {self.step}. {text}"), file=self.out, flush=True)

    def say(self, text: str) -> None:
        for line in textwrap.wrap(text, 96) or [""]:
            print(f"   {line}", file=self.out, flush=True)

    def ok(self, text: str) -> None:
        print(self._c("32", f"   ✔ {text}"), file=self.out, flush=True)

    def table(self, text: str) -> None:
        print(textwrap.indent(text, "   "), file=self.out, flush=True)

    def bar(self, label: str, done: int, total: int, note: str = "") -> None:
        width = 30
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        filled = int(frac * width)
        line = f"   {label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {note}"
        if self.out.isatty():
            print("\r" + line.ljust(110), end="", file=self.out, flush=True)
        elif line != self._last_bar:  # a log file gets each distinct state once
            print(line, file=self.out, flush=True)
        self._last_bar = line

    def end_bar(self) -> None:
        if self.out.isatty():
            print(file=self.out, flush=True)
        self._last_bar = ""


DEMO_SNAPSHOT_ENTRIES = 200
DEMO_CATCHUP_ENTRIES = 50


def _put_many(cluster: ProcessCluster, node_id: int, prefix: str, start: int, count: int) -> None:
    for i in range(start, start + count):
        value = f"value-{i}-".encode() * 8
        res = cluster.put(node_id, f"{prefix}{i}", value)
        if res.status != 204:
            raise RuntimeError(f"PUT {prefix}{i} failed: {res.status} {res.text or res.error}")


def _cluster_table(cluster: ProcessCluster) -> str:
    urls = [n.url for n in cluster.nodes.values() if n.proc is not None]
    table, _ = status_table(urls, timeout=2.0)
    return table


def run_tour(cluster: ProcessCluster, say: _Narrator) -> None:
    """The narrated tour (raises on any unexpected outcome)."""
    say.title("Starting a 3-node KV cluster")
    say.say(
        f"Each node is `python -m examples.kv` with --snapshot-entries {DEMO_SNAPSHOT_ENTRIES} "
        f"and --catchup-entries {DEMO_CATCHUP_ENTRIES}, so snapshots come quickly. "
        f"Data and logs live in {cluster.workdir}."
    )
    cluster.start_all()
    for i in range(1, cluster.size + 1):
        cluster.wait_ready(i)
    leader = cluster.wait_leader()
    say.ok(f"node {leader} was elected leader")
    say.table(_cluster_table(cluster))

    say.title("Writing 150 keys (each PUT answers 204 only once committed and applied)")
    follower = next(i for i in range(1, cluster.size + 1) if i != leader)
    _put_many(cluster, follower, "key", 0, 150)
    res = cluster.get(leader, "key42")
    say.ok(
        f"150 keys written through follower {follower}; GET /key42 on the leader -> {res.text!r}"
    )

    say.title("A snapshot is taken")
    say.say(
        f"Once {DEMO_SNAPSHOT_ENTRIES} entries are applied, every node captures its state "
        "between two applies and streams it to disk while applies go on."
    )
    _put_many(cluster, leader, "key", 150, 100)
    cluster.wait_for(
        "snapshots on every node",
        lambda: all(
            (st := cluster.status(i)) and st.get("snapshot_index", 0) > 0
            for i in range(1, cluster.size + 1)
        ),
    )
    say.ok("every node has a snapshot")
    say.table(_cluster_table(cluster))

    victim = next(i for i in range(cluster.size, 0, -1) if i != leader)
    say.title(f"SIGKILL follower {victim}")
    cluster.kill(victim)
    say.ok(f"node {victim} is down; the other two still form a majority")

    say.title("More writes while it is down, until the leader compacts its log past it")
    lagging = cluster.nodes[victim]
    last_seen = 0
    for st in (cluster.status(i) for i in range(1, cluster.size + 1)):
        if st:
            last_seen = max(last_seen, int(st.get("commit", 0)))
    written = 250
    while True:
        _put_many(cluster, leader, "key", written, 100)
        written += 100
        st = cluster.status(leader) or {}
        if int(st.get("first_index", 0)) > last_seen + 1 and written >= 600:
            break
    say.ok(
        f"{written} keys in total; the leader's log now starts at index {st.get('first_index')}, "
        f"beyond what node {victim} has: it can only catch up from a snapshot"
    )

    say.title(f"Restarting node {victim}: it catches up through InstallSnapshot")
    before = 0
    cluster.start(victim)
    cluster.wait_ready(victim)
    target = int((cluster.status(leader) or {}).get("commit", 0))

    def progress() -> bool:
        st = cluster.status(victim) or {}
        applied = int(st.get("applied") or 0)
        installed = int(st.get("snapshots_installed") or 0)
        if installed > before:
            note = "snapshot installed, replaying the log tail"
            if applied >= target:
                note = "snapshot installed, caught up"
        else:
            peer = ((cluster.status(leader) or {}).get("peers") or {}).get(str(victim)) or {}
            state = peer.get("state")
            note = f"leader sees it in state {state!r}" if state else "connecting..."
            if state == "snapshot":
                note = "leader is streaming a snapshot to it..."
        say.bar(f"node {victim}", applied, target, note)
        return applied >= target and installed > before

    cluster.wait_for(f"node {victim} to catch up", progress, timeout=60, poll=0.1)
    say.end_bar()
    res = cluster.get(victim, f"key{written - 1}", serializable=True)
    say.ok(
        f"node {victim} installed a snapshot and replayed the rest; a local (serializable) read "
        f"of key{written - 1} on it -> {res.text[:24]!r}..."
    )
    say.table(_cluster_table(cluster))
    del lagging

    new_id = cluster.size + 1
    say.title(f"Adding node {new_id}, then removing it")
    cluster.start(new_id, join=True)
    cluster.wait_ready(new_id)
    leader = cluster.wait_leader()
    res = http_request(
        "POST", cluster.url(leader, f"/{new_id}"), cluster.nodes[new_id].raft_url.encode()
    )
    if res.status != 204:
        raise RuntimeError(f"POST /{new_id} failed: {res.status} {res.text or res.error}")
    cluster.wait_for(
        f"node {new_id} to catch up",
        lambda: (
            (st := cluster.status(new_id))
            and int(st.get("applied", 0)) >= int((cluster.status(leader) or {}).get("commit", 1))
        ),
        timeout=60,
    )
    st4 = cluster.status(new_id) or {}
    how = " through InstallSnapshot" if int(st4.get("snapshots_installed") or 0) else ""
    say.ok(f"node {new_id} joined (POST /{new_id}) and caught up{how}:")
    say.table(_cluster_table(cluster))
    res = http_request("DELETE", cluster.url(leader, f"/{new_id}"))
    if res.status != 204:
        raise RuntimeError(f"DELETE /{new_id} failed: {res.status} {res.text or res.error}")
    cluster.stop(new_id)
    say.ok(f"node {new_id} removed (DELETE /{new_id}) and stopped; the cluster keeps serving")
    res = cluster.put(leader, "tour", b"done")
    if res.status != 204:
        raise RuntimeError(f"final PUT failed: {res.status}")


def _print_try_it(cluster: ProcessCluster, say: _Narrator) -> None:
    n1 = cluster.nodes[1]
    urls = " ".join(cluster.nodes[i].url for i in range(1, cluster.size + 1))
    say.title("Try it yourself (Ctrl-C stops the cluster)")
    say.table(
        "\n".join(
            [
                f"curl -X PUT -d hello {n1.url}/greeting",
                f"curl {n1.url}/greeting",
                f"curl '{cluster.nodes[2].url}/greeting?serializable=true'",
                f"curl {n1.url}/-/status",
                f"curl {n1.url}/metrics",
                f"trioraft status {urls}",
                f"trioraft snapshot list {n1.data_dir}",
                f"trioraft snapshot verify {n1.data_dir}",
                f"trioraft wal dump {n1.data_dir} | tail",
                f"# logs: {cluster.workdir}/node-*.log",
            ]
        )
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    say = _Narrator(sys.stdout)
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="trioraft-demo-"))
    keep = args.keep or bool(args.dir)
    try:
        cluster = ProcessCluster(
            workdir,
            3,
            extra_args=[
                "--snapshot-entries",
                str(DEMO_SNAPSHOT_ENTRIES),
                "--catchup-entries",
                str(DEMO_CATCHUP_ENTRIES),
                "--tick-ms",
                "50",
            ],
        )
    except FileNotFoundError as exc:
        print(f"trioraft demo: {exc}", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    handled = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.signal(sig, on_term) for sig in handled}
    try:
        with cluster:
            try:
                run_tour(cluster, say)
            except (RuntimeError, TimeoutError) as exc:
                print(f"\ntrioraft demo: the tour failed: {exc}", file=sys.stderr)
                print(cluster.logs_digest(), file=sys.stderr)
                return 1
            say.title("Tour complete")
            if args.tour_only:
                return 0
            _print_try_it(cluster, say)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping the cluster...", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"data kept in {workdir}")


# -- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``trioraft`` argument parser."""
    p = argparse.ArgumentParser(
        prog="trioraft",
        description="trioraft: a guided demo cluster and tools to look inside a node.",
        epilog="DIR is a node's data directory (e.g. kv-1) or its wal/ or snap/ sub-directory. "
        "The storage tools only read.",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a local 3-node KV cluster with a guided tour")
    demo.add_argument("--tour-only", action="store_true", help="exit after the tour")
    demo.add_argument("--dir", help="work directory (default: a new temp dir, removed on exit)")
    demo.add_argument("--keep", action="store_true", help="keep the work directory on exit")
    demo.set_defaults(fn=_cmd_demo)

    st = sub.add_parser("status", help="show a table of nodes from their /-/status")
    st.add_argument("urls", nargs="+", metavar="URL", help="HTTP URL of a node")
    st.add_argument("--timeout", type=float, default=3.0, help="seconds per node")
    st.set_defaults(fn=_cmd_status)

    wal = sub.add_parser("wal", help="write-ahead log tools")
    wal_sub = wal.add_subparsers(dest="wal_cmd", required=True, metavar="COMMAND")
    dump = wal_sub.add_parser("dump", help="print every WAL record")
    dump.add_argument("dir", metavar="DIR", help="data dir or its wal/ dir")
    dump.add_argument(
        "--data-bytes", type=int, default=32, help="bytes of entry data to show (hex)"
    )
    dump.set_defaults(fn=_cmd_wal_dump)

    snap = sub.add_parser("snapshot", help="snapshot tools")
    snap_sub = snap.add_subparsers(dest="snap_cmd", required=True, metavar="COMMAND")
    for name, text in (
        ("list", "list the snapshots (newest first)"),
        ("inspect", "show one snapshot's metadata and files (default: newest)"),
        ("verify", "check every snapshot file's size and CRC32C; exit 1 on damage"),
    ):
        sp = snap_sub.add_parser(name, help=text)
        sp.add_argument("dir", metavar="DIR", help="data dir or its snap/ dir")
        if name == "inspect":
            sp.add_argument("index", nargs="?", type=int, help="snapshot index (default newest)")
        sp.set_defaults(fn=_cmd_snapshot)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trioraft`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except BrokenPipeError:  # e.g. `trioraft wal dump DIR | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
