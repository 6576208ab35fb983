"""A tiny seeded pseudo-random generator (SplitMix64), so the core stays deterministic and never
touches the global :mod:`random` module."""

from __future__ import annotations

__all__ = ["SplitMix64"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


class SplitMix64:
    """SplitMix64 (Steele, Lea and Flood 2014): 64-bit state, passes BigCrush, trivially seeded.

    Args:
        seed: any integer; only its low 64 bits matter.
    """

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK

    def next_u64(self) -> int:
        """Return the next 64-bit value."""
        self._state = (self._state + _GOLDEN) & _MASK
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """Return a uniform integer in ``[0, n)``.

        Raises:
            ValueError: if ``n <= 0``.
        """
        if n <= 0:
            raise ValueError("n must be positive")
        # Rejection sampling removes the modulo bias of plain ``x % n``.
        limit = (_MASK + 1) - ((_MASK + 1) % n)
        while True:
            x = self.next_u64()
            if x < limit:
                return x % n
