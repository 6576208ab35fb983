"""Crash matrix on the simulated file system.

A scripted node lifetime (appends with suffix replacement, segment cuts, local snapshots with
their markers, WAL release and snapshot retention, a follower install streamed with
``write_at``) is run once to count its mutating file-system calls; then, for every call N, it is
run again with a crash injected right before call N, the disk loses whatever the crash model
picks (seeded: unsynced bytes torn or zeroed, un-fsynced creates and renames vanished or
reverted), and the node recovers.

Checks after each recovery:

* the logical state — the snapshot's content plus the WAL entries after it, and the hard
  state — equals the model's state after some prefix of the WAL operations that is at least as
  long as every step acknowledged before the crash (nothing acknowledged is lost, and nothing
  appears that was never written);
* the recovered node can write again, and a second recovery sees that write.

Every case prints its seed and crash point; replay one with ``CRASH_CASE=<point>:<seed>``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import cbor2
import pytest

import trioraft.storage.wal as wal_module
from trioraft.core.types import ConfState, Entry, HardState, SnapshotMeta
from trioraft.storage.fs import SimulatedCrash, SimulatedFileSystem
from trioraft.storage.recovery import Recovered, recover
from trioraft.storage.snapshots import SnapshotStore
from trioraft.storage.wal import WAL

D = "/node"
CONF = ConfState(voters=frozenset({1, 2, 3}))
SEGMENT = 400
Log = dict[int, tuple[int, bytes]]
State = tuple[Log, HardState]


def entries(first: int, last: int, term: int, tag: str = "") -> list[Entry]:
    return [Entry(term, i, data=f"{tag}{term}:{i}".encode() * 3) for i in range(first, last + 1)]


class Node:
    """Runs the script against real storage objects while tracking the model."""

    def __init__(self, fs: SimulatedFileSystem) -> None:
        self.fs = fs
        self.log: Log = {}
        self.hs = HardState()
        #: model state after each WAL operation (index 0: nothing written)
        self.states: list[State] = [({}, HardState())]
        #: positions in ``states`` recovery must never land on: right after an install marker,
        #: before the hard state that commits it (the node would sit on a snapshot its durable
        #: commit index and term do not cover)
        self.transient: set[int] = set()
        #: WAL operations belonging to steps that completed (were acknowledged)
        self.acked = 0
        self.step = "open"
        self.wal: WAL
        self.store: SnapshotStore
        _, self.wal, self.store = recover(D, fs=fs, retention=2, segment_bytes=SEGMENT)

    # -- WAL operations (each one record) ---------------------------------------------------

    def save(self, ents: list[Entry], hs: HardState | None) -> None:
        if ents:
            first = ents[0].index
            self.log = {i: v for i, v in self.log.items() if i < first}
            for e in ents:
                self.log[e.index] = (e.term, e.data)
        if hs is not None:
            self.hs = hs
        self.states.append((dict(self.log), self.hs))
        self.wal.save(ents, hs)

    def marker(self, meta: SnapshotMeta, replaced_log: Log | None = None) -> None:
        if replaced_log is not None:
            self.log = dict(replaced_log)
            self.transient.add(len(self.states))
        self.states.append((dict(self.log), self.hs))
        self.wal.save_snapshot_marker(meta)

    def done(self) -> None:
        self.acked = len(self.states) - 1

    # -- steps ------------------------------------------------------------------------------

    def local_snapshot(self, index: int, keep_from: int) -> None:
        self.step = f"snapshot@{index}"
        term = self.log[index][0]
        content = cbor2.dumps([[i, *self.log[i]] for i in range(1, index + 1)])
        with self.store.begin(index, term, CONF) as b:
            with b.open_file("log") as f:
                for off in range(0, len(content), 256):
                    f.write(content[off : off + 256])
            stored = b.commit(b"local")
        self.marker(stored.raft_meta)
        # like the runtime: keep the WAL back to the oldest retained snapshot
        self.wal.release_to(keep_from)
        self.store.apply_retention()
        self.done()

    def install(self, leader_log: Log, index: int, term: int) -> None:
        self.step = f"install@{index}"
        content = cbor2.dumps([[i, *leader_log[i]] for i in range(1, index + 1)])
        b = self.store.begin(index, term, CONF)
        try:
            for off in range(0, len(content), 200):
                b.write_at("log", off, content[off : off + 200])
            stored = b.commit(b"installed")
        except BaseException:
            b.abort()
            raise
        self.marker(stored.raft_meta, {i: leader_log[i] for i in range(1, index + 1)})
        self.save([], HardState(self.hs.term if self.hs.term > term else term, 0, index))
        self.done()

    def append(self, ents: list[Entry], hs: HardState | None) -> None:
        self.step = f"append {ents[0].index if ents else '-'}..{ents[-1].index if ents else '-'}"
        self.save(ents, hs)
        self.done()

    def release(self, index: int) -> None:
        self.step = f"release@{index}"
        self.wal.release_to(index)
        self.store.apply_retention()
        self.done()


def script(node: Node) -> None:
    node.append(entries(1, 5, 1), HardState(1, 1, 0))
    node.append(entries(6, 8, 1), HardState(1, 1, 5))
    node.local_snapshot(5, keep_from=5)
    node.append(entries(9, 12, 2), HardState(2, 2, 8))
    node.append(entries(11, 13, 3, "r"), HardState(3, 3, 10))  # replaces 11..12
    node.local_snapshot(10, keep_from=5)
    # a leader of term 4 installs snapshot 12/4: our 11..13 (term 3) were never committed and
    # conflict with it, so the install replaces the log (and drops our stale entry 13)
    leader = {i: node.log[i] for i in range(1, 11)}
    leader.update({i: (4, f"L{i}".encode()) for i in range(11, 13)})
    node.install(leader, 12, 4)
    node.append(entries(13, 22, 4), HardState(4, 0, 21))
    node.append([], HardState(4, 0, 22))
    node.local_snapshot(22, keep_from=10)
    node.append(entries(23, 30, 5), HardState(5, 5, 22))
    # the state machine applied 28 before the hard state committing it was durable
    node.local_snapshot(28, keep_from=28)
    node.release(28)
    node.append(entries(31, 31, 5), HardState(5, 5, 30))
    node.release(28)


def logical(rec: Recovered, store: SnapshotStore) -> State:
    log: Log = {}
    if rec.snapshot is not None:
        with store.open_reader(rec.snapshot.index).open("log") as f:
            for i, t, d in cbor2.loads(f.read()):
                log[i] = (t, d)
        assert max(log, default=0) == rec.snapshot.index
    for e in rec.entries:
        log[e.index] = (e.term, e.data)
    return log, rec.hard_state


def count_ops() -> int:
    fs = SimulatedFileSystem()
    node = Node(fs)
    start = fs.op_count
    script(node)
    node.wal.close()
    return fs.op_count - start


def run_case(point: int, seed: int | None) -> str:
    """Crash before mutating call ``point`` of the script; ``seed`` drives the crash model
    (``None``: lose everything not durable). Returns the step that was interrupted."""
    fs = SimulatedFileSystem()
    node = Node(fs)
    fs.crash_at(fs.op_count + point)
    with pytest.raises(SimulatedCrash):
        script(node)
    fs.crash(None if seed is None else random.Random(seed * 100_003 + point))
    rec, wal, store = recover(D, fs=fs, retention=2, segment_bytes=SEGMENT)
    got = logical(rec, store)
    allowed = [
        st for i, st in enumerate(node.states) if i >= node.acked and i not in node.transient
    ]
    where = f"crash point {point} seed {seed} in step {node.step!r}"
    assert got in allowed, (
        f"{where}: recovered {sorted(got[0])} {got[1]}, acknowledged {node.acked} WAL ops; "
        f"allowed last indexes {[max(s[0], default=0) for s in allowed]}"
    )
    # the recovered node writes on, and a clean restart sees it
    log, hs = got
    nxt = max(log, default=0) + 1
    wal.save(entries(nxt, nxt, 9, "after"), HardState(9, 0, hs.commit))
    wal.close()
    rec2, wal2, store2 = recover(D, fs=fs, retention=2, segment_bytes=SEGMENT)
    log2, hs2 = logical(rec2, store2)
    assert log2 == {**log, nxt: (9, entries(nxt, nxt, 9, "after")[0].data)}, where
    assert hs2 == HardState(9, 0, hs.commit), where
    wal2.close()
    return node.step


def _cases(seeds: list[int | None], stride: int = 1) -> list[tuple[int, int | None]]:
    env = os.environ.get("CRASH_CASE")
    if env:
        point, seed = env.split(":")
        return [(int(point), None if seed == "None" else int(seed))]
    n = count_ops()
    return [(p, s) for s in seeds for p in range(0, n, stride)]


def _run_all(cases: list[tuple[int, int | None]], report: Callable[[str], None]) -> None:
    steps: dict[str, int] = {}
    for point, seed in cases:
        step = run_case(point, seed)
        steps[step] = steps.get(step, 0) + 1
    report(f"{len(cases)} crash cases over steps {steps}")


def test_crash_matrix_every_call_pessimistic_and_two_seeds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cases = _cases([None, 1, 2])
    print("crash cases (point, seed):", cases[:3], "...", len(cases))
    _run_all(cases, print)
    # every kind of step was interrupted somewhere
    out = capsys.readouterr().out
    for kind in ("append", "snapshot@", "install@", "release@"):
        assert kind in out


def test_crash_matrix_with_prezeroed_segments(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # every segment zero-filled (inline on the simulated file system) and renamed into place:
    # crash points inside each preparation, its header write, rename and directory fsync
    monkeypatch.setattr(wal_module, "_default_prezero", lambda fs: True)
    cases = _cases([None, 1])
    print("crash cases (point, seed):", cases[:3], "...", len(cases))
    _run_all(cases, print)
    out = capsys.readouterr().out
    for kind in ("append", "snapshot@", "install@", "release@"):
        assert kind in out


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 23))
def test_crash_matrix_more_seeds(seed: int) -> None:
    print("seed", seed)
    _run_all(_cases([seed]), print)


def test_script_counts_are_stable() -> None:
    assert count_ops() == count_ops()
