"""``python -m examples.counter``: one node of the counter cluster (SOFAJRaft's counter).

Snapshots are taken every 30 s (``--snapshot-interval``, like the original) and every
``--snapshot-entries`` applied entries. Example::

    python -m examples.counter --id 1 --cluster http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379 --port 12380
    ...
    curl -XPOST -d 5 http://127.0.0.1:12380/incr
    curl http://127.0.0.1:22380/value
"""  # noqa: E501

from __future__ import annotations

import sys
from collections.abc import Sequence

from examples.common.flags import parse_flags
from examples.common.runner import run_example
from examples.counter.app import CounterApp
from examples.counter.store import CounterStore

#: SOFAJRaft's counter example snapshots every 30 seconds.
DEFAULT_SNAPSHOT_INTERVAL = 30.0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags and run the node until SIGINT/SIGTERM."""
    flags = parse_flags(
        argv,
        prog="python -m examples.counter",
        name="counter",
        snapshot_interval=DEFAULT_SNAPSHOT_INTERVAL,
    )
    store = CounterStore()
    return run_example(flags, store, CounterApp(store))


if __name__ == "__main__":
    sys.exit(main())
