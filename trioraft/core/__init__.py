"""The sans-I/O Raft core: a deterministic state machine with no trio, clock, I/O or global
randomness. Inputs are method calls; outputs are numbered :class:`Ready` batches."""
