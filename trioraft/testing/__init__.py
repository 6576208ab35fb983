"""Public testing utilities: a multi-node core harness, an in-memory cluster, simulated
network and disk, and a linearizability checker (:mod:`trioraft.testing.linearizability`)."""
