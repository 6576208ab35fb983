"""The Trio runtime: one task ("actor") per role, wired with memory channels.

``raft_actor`` owns the sans-I/O core, ``wal_actor`` persists with group commit, ``fsm_actor``
applies committed entries to the user's state machine, ``snapshotter`` takes and installs
snapshots, and ``transport`` moves messages and snapshot files between nodes. Users normally only
meet :func:`trioraft.open_raft_node` and :class:`trioraft.RaftNode`.
"""
