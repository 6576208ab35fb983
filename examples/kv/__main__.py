"""``python -m examples.kv``: one node of the KV cluster (etcd raftexample's API).

Example (three terminals)::

    python -m examples.kv --id 1 --cluster http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379 --port 12380
    python -m examples.kv --id 2 --cluster http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379 --port 22380
    python -m examples.kv --id 3 --cluster http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379 --port 32380
    curl -L http://127.0.0.1:12380/my-key -XPUT -d bar
    curl -L http://127.0.0.1:32380/my-key
"""  # noqa: E501

from __future__ import annotations

import sys
from collections.abc import Sequence

from examples.common.flags import parse_flags
from examples.common.runner import run_example
from examples.kv.app import KVApp
from examples.kv.store import KVStore


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags and run the node until SIGINT/SIGTERM."""
    flags = parse_flags(argv, prog="python -m examples.kv", name="kv")
    store = KVStore()
    return run_example(flags, store, KVApp(store))


if __name__ == "__main__":
    sys.exit(main())
