"""Trial ids and seeds of many trials at once, byte for byte those of :mod:`orchestrator.ids`.

:func:`orchestrator.ids.trial_id` and :func:`orchestrator.ids.derive_seed` hash the
canonical JSON of a small mapping. Built one trial at a time through the general encoder
that costs ~100 µs a trial (a 1e6-trial plan: minutes). The keys here write the same
canonical text from templates instead (sorted keys, no whitespace, ASCII, the same
``json`` string escapes), with the parts shared by many trials (a cell's id, the study's
parameters, a replicate's seeds) encoded once, and hash it: ~1 µs a trial.
``tests/test_design.py`` checks both against :mod:`orchestrator.ids` on every key shape.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Sequence

import numpy as np

from ..ids import ID_LENGTH, canonical_json

__all__ = ["SeedKey", "TrialKey", "id_text", "id_value"]

_ID_DIGITS = ID_LENGTH - 1  # the hex digits after the one-letter prefix ("t" or "c")
_SHIFT = 64 - 4 * _ID_DIGITS  # an id is the top 4 * _ID_DIGITS bits of the first 8 digest bytes


def _text(value: str) -> str:
    return json.dumps(value, ensure_ascii=True)


def id_value(trial_id: str) -> int | None:
    """The number a trial id (``t`` + 15 hex digits) stands for; ``None`` for anything else."""
    if len(trial_id) != ID_LENGTH or not trial_id.startswith("t"):
        return None
    try:
        return int(trial_id[1:], 16)
    except ValueError:
        return None


def id_text(value: int) -> str:
    """The trial id of a number from :meth:`TrialKey.values` (the inverse of :func:`id_value`)."""
    return f"t{value:0{_ID_DIGITS}x}"


class SeedKey:
    """:func:`orchestrator.ids.derive_seed` for one study seed and stream, any index and cell.

    Example:
        >>> from orchestrator.ids import derive_seed
        >>> SeedKey(7, "init").seed(3, "c1") == derive_seed(7, "init", 3, "c1")
        True
    """

    def __init__(self, study_seed: int, stream: str):
        tail = f',"stream":{_text(stream)},"study_seed":{int(study_seed)}}}'
        self._shared = '{"index":%d' + tail.replace("%", "%%")
        self._scoped = '{"cell":%s,"index":%d' + tail.replace("%", "%%")

    def seed(self, index: int, cell: str | None = None) -> int:
        """The seed of stream index ``index``, for ``cell`` (``None``: shared by every cell)."""
        text = self._shared % index if cell is None else self._scoped % (_text(cell), index)
        return int.from_bytes(hashlib.sha256(text.encode("ascii")).digest()[:8], "big") >> 1


class TrialKey:
    """:func:`orchestrator.ids.trial_id` of the trials of a study: one cell's trials at a time.

    The canonical key is ``{"cell":…,"params":…,"replicate":r,"seeds":{…}}``; a cell's part
    is hashed once and copied for each of its trials.

    Args:
        params: the fixed parameters every trial runs with.
        streams: the seed stream names each trial has a seed for.

    Example:
        >>> from orchestrator.ids import trial_id
        >>> key = TrialKey({"lr": 0.1}, ["init", "data"])
        >>> [value] = key.values("c1", [(0, (11, 22))]).tolist()
        >>> id_text(value) == trial_id("c1", 0, {"init": 11, "data": 22}, {"lr": 0.1})
        True
    """

    def __init__(self, params: Mapping[str, Any], streams: Sequence[str]):
        self._params = canonical_json(dict(params))
        self.streams = list(streams)
        self._order = sorted(range(len(self.streams)), key=lambda i: self.streams[i])
        seeds = ",".join(_text(self.streams[i]).replace("{", "{{").replace("}", "}}") + ":{}" for i in self._order)
        self._suffix = '{},"seeds":{{' + seeds + "}}}}"

    def suffix(self, replicate: int, seeds: Sequence[int]) -> bytes:
        """The part of a key after the cell and parameters: the replicate and its seeds (``streams`` order)."""
        return self._suffix.format(int(replicate), *(int(seeds[i]) for i in self._order)).encode("ascii")

    def values(self, cell_id: str, rows: Sequence[tuple[int, Sequence[int]]] | None = None, *, suffixes: Sequence[bytes] | None = None) -> "np.ndarray":
        """Trial id numbers (uint64; see :func:`id_text`) of one cell's trials.

        Args:
            cell_id: the cell.
            rows: ``(replicate, seeds in streams order)`` per trial; or
            suffixes: what :meth:`suffix` gives for them, when many cells share them.
        """
        head = hashlib.sha256(f'{{"cell":{_text(cell_id)},"params":{self._params},"replicate":'.encode("ascii"))
        parts = suffixes if suffixes is not None else [self.suffix(r, s) for r, s in rows or ()]
        digests = bytearray()
        copy = head.copy
        for part in parts:
            h = copy()
            h.update(part)
            digests += h.digest()[:8]
        return np.frombuffer(bytes(digests), dtype=">u8").astype(np.uint64) >> np.uint64(_SHIFT)
