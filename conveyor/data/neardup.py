"""Perceptual-hash distances: which images are near-duplicates of which."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_BLOCK_GROUP_ALL_PAIRS = 64
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


def near_pairs(phashes: list[str], max_distance: int) -> list[tuple[int, int, int]]:
    """All pairs ``(i, j, distance)``, i < j, of hashes within ``max_distance``, sorted.

    Same result as :func:`near_duplicate_pairs`, which compares all n² pairs.
    For many hashes this first finds candidates by the pigeonhole principle: cut the bits into
    ``max_distance + 1`` blocks; two hashes within the distance agree exactly on at least one
    block. Only hashes sharing a block are compared (with ``near_duplicate_pairs`` for big groups).
    """
    n = len(phashes)
    if n < 2:
        return []
    packed = hashes_to_bits(phashes)
    bits = np.unpackbits(packed, axis=1)
    nbits = bits.shape[1]
    nblocks = max_distance + 1
    if n <= 256 or nbits // nblocks < 8:
        return sorted(near_duplicate_pairs(phashes, max_distance))
    edges = np.linspace(0, nbits, nblocks + 1).astype(int)
    found: dict[tuple[int, int], int] = {}
    ci: list[np.ndarray] = []
    cj: list[np.ndarray] = []
    for b in range(nblocks):
        block = np.packbits(bits[:, edges[b] : edges[b + 1]], axis=1)
        keys = np.zeros(n, dtype=np.uint64)
        for col in range(block.shape[1]):  # <= 8 bytes per block for 64-bit hashes; more bytes fold in
            keys = keys * np.uint64(257) + block[:, col].astype(np.uint64) + np.uint64(1)
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        starts = np.flatnonzero(np.concatenate([[True], sk[1:] != sk[:-1]]))
        sizes = np.diff(np.concatenate([starts, [n]]))
        for size in np.unique(sizes[sizes >= 2]).tolist():
            firsts = starts[sizes == size]
            if size > _BLOCK_GROUP_ALL_PAIRS:
                for f in firsts.tolist():
                    members = order[f : f + size]
                    for i, j, dist in near_duplicate_pairs([phashes[m] for m in members], max_distance):
                        a, c = int(members[i]), int(members[j])
                        found[(min(a, c), max(a, c))] = dist
                continue
            members = order[firsts[:, None] + np.arange(size)[None, :]]  # (groups, size)
            ii, jj = np.triu_indices(size, k=1)
            a, c = members[:, ii].ravel(), members[:, jj].ravel()
            ci.append(np.minimum(a, c))
            cj.append(np.maximum(a, c))
    if ci:
        pair_ids = np.unique(np.concatenate(ci).astype(np.int64) * n + np.concatenate(cj))
        i_all, j_all = pair_ids // n, pair_ids % n
        dist = np.unpackbits(packed[i_all] ^ packed[j_all], axis=1).sum(axis=1)
        ok = dist <= max_distance
        for i, j, dd in zip(i_all[ok].tolist(), j_all[ok].tolist(), dist[ok].tolist()):
            found[(i, j)] = int(dd)
    return sorted((i, j, dd) for (i, j), dd in found.items())
