"""Perceptual-hash distances: which images are near-duplicates of which."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hashes_to_bits(hex_hashes: Sequence[str]) -> np.ndarray:
    """Hex perceptual hashes (all of one length) to an (n, bytes) uint8 array."""
    if len(hex_hashes) == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    lengths = {len(h) for h in hex_hashes}
    if len(lengths) != 1:
        raise ValueError(f"perceptual hashes have mixed lengths {sorted(lengths)}")
    return np.frombuffer(bytes.fromhex("".join(hex_hashes)), dtype=np.uint8).reshape(len(hex_hashes), -1)


def near_duplicate_pairs(
    hashes_a: Sequence[str], max_distance: int, hashes_b: Sequence[str] | None = None, chunk: int = 512
) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, distance)`` whose Hamming distance is <= ``max_distance``.

    With one list, pairs inside it (i < j). With two lists, pairs across them (i in a, j in b).
    Vectorised in chunks: a few thousand hashes take well under a second.
    """
    a = hashes_to_bits(hashes_a)
    same = hashes_b is None
    b = a if same else hashes_to_bits(hashes_b)
    out: list[tuple[int, int, int]] = []
    if len(a) == 0 or len(b) == 0:
        return out
    if a.shape[1] != b.shape[1]:
        raise ValueError("perceptual hashes of the two sets have different lengths")
    for start in range(0, len(a), chunk):
        block = a[start : start + chunk]
        dist = _POPCOUNT[np.bitwise_xor(block[:, None, :], b[None, :, :])].sum(axis=2, dtype=np.int32)
        ii, jj = np.nonzero(dist <= max_distance)
        for i, j in zip(ii.tolist(), jj.tolist()):
            gi = start + i
            if same and j <= gi:
                continue
            out.append((gi, j, int(dist[i, j])))
    return out
