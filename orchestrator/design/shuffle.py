"""The run order's shuffle: ``random.Random(seed).shuffle`` of ``range(n)``, its permutation, fast.

Run orders have always been ``random.Random(derive_seed(...)).shuffle`` of the trials; a
study's run order must not change with the planner. CPython's shuffle is a Python loop
(Fisher-Yates; each ``j`` from ``getrandbits(k)`` with rejection), about a second per
million trials, longer on a loaded machine. :func:`shuffled` reproduces it exactly: the
Mersenne Twister words come from numpy's ``MT19937`` set to the same state, the
rejection sampling is decided for blocks of words at once (only words near the threshold
need a look of their own), and only the swaps stay a Python loop. At first use it checks
itself against ``random.shuffle``; on an interpreter whose ``random`` differs it uses
``random.shuffle`` itself.
"""

from __future__ import annotations

import functools
import random

import numpy as np

__all__ = ["shuffled"]

_BLOCK = 1024  # words decided at once; about BLOCK**2 / 2**k of them need a look of their own


def shuffled(n: int, seed: int) -> "np.ndarray":
    """``x = list(range(n)); random.Random(seed).shuffle(x)``: the same order, as an int64 array.

    Example:
        >>> x = list(range(1000)); random.Random(7).shuffle(x)
        >>> shuffled(1000, 7).tolist() == x
        True
    """
    if n < 2 or not _exact():
        x = list(range(n))
        random.Random(seed).shuffle(x)
        return np.array(x, dtype=np.int64)
    return _apply(_draws(n, seed))


def _apply(js: "list[int] | np.ndarray") -> "np.ndarray":
    """The Fisher-Yates swaps at once: ``js[t]`` is the ``j`` drawn for step ``i = n - 1 - t``.

    Step ``i`` puts in position ``i`` (never touched again) what position ``j_i`` holds then,
    and moves what position ``i`` held to ``j_i``. What position ``p`` holds before step ``i``
    is what the last earlier step writing ``p`` moved there (steps run ``i = n - 1`` down,
    so that is the smallest writer above ``i``), else ``p`` itself. Both are found for every
    step with sorts and pointer jumping instead of ``n`` swaps.
    """
    n = len(js) + 1
    steps = np.arange(n - 1, 0, -1, dtype=np.int64)
    j = np.asarray(js, dtype=np.int64)
    # the writer of position p that acts last before p's own step: min{i > p : j_i = p}
    into = np.full(n + 1, n, dtype=np.int64)
    movers = steps > j
    np.minimum.at(into, j[movers], steps[movers])
    # held[i]: what position i holds before step i (follow the writers up to a position nothing wrote)
    held = np.where(into[:n] < n, into[:n], np.arange(n))
    while True:
        jumped = held[held]
        if np.array_equal(jumped, held):
            break
        held = jumped
    # the step before each step (in run time) that wrote the same position j: the next larger step with that j
    order = np.lexsort((steps, j))
    same = j[order][1:] == j[order][:-1]
    previous = np.full(n - 1, -1, dtype=np.int64)
    previous[order[:-1][same]] = steps[order[1:][same]]
    out = np.empty(n, dtype=np.int64)
    out[steps] = np.where(previous >= 0, held[np.maximum(previous, 0)], j)
    first = into[0]  # position 0 ends with what its last writer moved there
    out[0] = held[first] if first < n else 0
    return out


class _Words:
    """The 32-bit outputs of ``random.Random(seed)``, in order, from numpy's MT19937 in the same state."""

    def __init__(self, seed: int):
        state = random.Random(seed).getstate()[1]
        self._generator = np.random.MT19937(0)
        self._generator.state = {"bit_generator": "MT19937", "state": {"key": np.array(state[:624], dtype=np.uint32), "pos": state[624]}}
        self._buffer = np.empty(0, dtype=np.uint64)
        self._at = 0

    def take(self, count: int) -> "np.ndarray":
        if self._at + count > len(self._buffer):
            fresh = self._generator.random_raw(max(count, 1 << 16))
            self._buffer = np.concatenate([self._buffer[self._at:], fresh])
            self._at = 0
        out = self._buffer[self._at:self._at + count]
        self._at += count
        return out

    def give_back(self, count: int) -> None:
        self._at -= count


def _draws(n: int, seed: int) -> list[int]:
    """The ``j`` of each step of the shuffle of ``n`` items (``i = n - 1`` down to 1)."""
    words = _Words(seed)
    js: list[int] = []
    m = n  # randbelow(m) with m = i + 1
    while m >= 2:
        k = m.bit_length()
        low = 1 << (k - 1)  # the smallest m with this k
        shift = np.uint64(32 - k)
        if m < 4 * _BLOCK:  # a few thousand steps: one word at a time
            while m >= low and m >= 2:
                draw = int(words.take(1)[0]) >> (32 - k)
                while draw >= m:
                    draw = int(words.take(1)[0]) >> (32 - k)
                js.append(draw)
                m -= 1
            continue
        while m >= low:
            count = min(_BLOCK, m - low + 1)  # even if every word is taken, m stays within this k
            r = words.take(count) >> shift
            sure: np.ndarray = r < np.uint64(m - count)  # taken whatever came before: m never falls below m - count + 1
            near = np.flatnonzero((r >= np.uint64(m - count)) & (r < np.uint64(m)))
            taken: np.ndarray = sure.copy()
            if len(near):
                before = np.concatenate([[0], np.cumsum(sure)])
                extra = 0
                for t in near.tolist():
                    if int(r[t]) < m - (int(before[t]) + extra):
                        taken[t] = True
                        extra += 1
            chosen = r[taken]
            js.extend(chosen.tolist())
            m -= len(chosen)
    return js


@functools.cache
def _exact() -> bool:
    """Whether this interpreter's ``random.shuffle`` is the algorithm :func:`_draws` follows."""
    for n, seed in ((2, 1), (5000, 3), (70_000, 12345)):
        expected = list(range(n))
        random.Random(seed).shuffle(expected)
        if _apply(_draws(n, seed)).tolist() != expected:
            return False
    return True
