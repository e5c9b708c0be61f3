"""Canonical JSON, content hashes and seed derivation.

Identifiers and seeds are pure functions of data: the same study gives the same ids and
seeds in every process, on every machine and Python version. ``json.dumps`` with sorted
keys, fixed separators and ``repr``-exact floats is stable across CPython 3 releases.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Mapping

__all__ = ["canonical_json", "content_hash", "cell_id", "trial_id", "derive_seed"]

ID_LENGTH = 16


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot hash a non-finite number ({value!r}) into an identifier")
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    # numpy scalars and the like
    if hasattr(value, "item"):
        return _canonical(value.item())
    raise TypeError(f"cannot put a {type(value).__name__} into canonical JSON: use str, int, float, bool")


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, ASCII only."""
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def content_hash(value: Any, length: int = ID_LENGTH) -> str:
    """SHA-256 of the canonical JSON of ``value``, as ``length`` hex digits."""
    return hashlib.sha256(canonical_json(value).encode("ascii")).hexdigest()[:length]


def cell_id(levels: Mapping[str, Any]) -> str:
    """Id of a design cell: a hash of its levels alone (factor name -> level)."""
    return "c" + content_hash({"levels": dict(levels)}, ID_LENGTH - 1)


def trial_id(cell: str, replicate: int, seeds: Mapping[str, int], params: Mapping[str, Any]) -> str:
    """Id of a trial: its cell, replicate, seeds (one per stream) and the fixed parameters it runs with.

    The replicate index is part of the key so that replicates with identical seeds (to
    measure run-to-run nondeterminism of a device) are still distinct trials.
    """
    key = {"cell": cell, "replicate": int(replicate), "seeds": dict(seeds), "params": dict(params)}
    return "t" + content_hash(key, ID_LENGTH - 1)


def derive_seed(study_seed: int, stream: str, index: int, cell: str | None = None) -> int:
    """A 63-bit seed for one stream, from (study seed, stream, stream index[, cell]).

    ``cell`` is None for streams shared across cells (common random numbers: replicate r
    of every cell starts from the same weights), or a cell id for streams drawn per cell.
    """
    key = {"study_seed": int(study_seed), "stream": stream, "index": int(index)}
    if cell is not None:
        key["cell"] = cell
    digest = hashlib.sha256(canonical_json(key).encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") >> 1
