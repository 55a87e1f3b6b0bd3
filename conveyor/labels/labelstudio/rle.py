"""Label Studio's brush RLE: the run-length code of ``label_studio_converter/brush.py`` (after
thi.ng rle-pack).

The mask is drawn as an RGBA image, H*W*4 bytes, a painted pixel 255 in all four channels and an
unpainted one 0, and that byte sequence is written as a bit stream: 32 bits value count, 5 bits
word size - 1, four times 4 bits run-length field size - 1, then records of ``1 bit repeat flag,
2 bits field-size index, that many bits count - 1`` followed by one word (a run) or count words
(literals); the stream is padded with zero bits to whole bytes, which form the list of ints.
:func:`rle_encode` writes what the converter's ``encode_rle`` writes (word size 8, field sizes 3,
4, 8, 16); :func:`rle_decode` reads any valid stream and takes a pixel as painted when its alpha
byte is non-zero.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

RLE_WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)
_RLE_HEADER_BITS = 32 + 5 + 4 * 4


def _rle_bits(arr: np.ndarray) -> str:
    """The converter's ``encode_rle`` bit string (before padding) for a 1-d array of byte values."""
    n = int(arr.size)
    parts = [f"{n:032b}", f"{RLE_WORD_SIZE - 1:05b}", "".join(f"{s - 1:04b}" for s in RLE_SIZES)]
    if n:
        change = np.flatnonzero(arr[1:] != arr[:-1])
        ends = np.append(change, n - 1)
        lengths = np.diff(np.append(-1, ends))
        values = arr[ends]
        for length, value in zip(lengths.tolist(), values.tolist()):
            word = f"{value:08b}"
            if length == 1:
                parts.append("000000" + word)  # a literal of one word (field size index 0, count - 1 = 0)
            elif length <= 8:
                parts.append(f"100{length - 1:03b}{word}")
            elif length <= 16:
                parts.append(f"101{length - 1:04b}{word}")
            elif length <= 256:
                parts.append(f"110{length - 1:08b}{word}")
            else:
                while length > 2**16:
                    parts.append(f"111{2**16 - 1:016b}{word}")
                    length -= 2**16
                parts.append(f"111{length - 1:016b}{word}")
    return "".join(parts)


def rle_encode(mask_bool: np.ndarray) -> list[int]:
    """Label Studio brush RLE of a boolean HxW mask (True = painted), as the converter's ``mask2rle``."""
    mask = np.asarray(mask_bool)
    if mask.ndim != 2:
        raise ValueError(f"a brush mask is 2-d (height, width), got shape {mask.shape}")
    rgba = np.repeat(np.where(mask.reshape(-1).astype(bool), 255, 0).astype(np.uint8), 4)
    bits = _rle_bits(rgba)
    bits += "0" * (8 - len(bits) % 8)  # as the converter: always at least one zero bit of padding
    return list(int(bits, 2).to_bytes(len(bits) // 8, "big"))


class _Bits:
    """Big-endian bit reader over bytes; reading past the end raises ValueError."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes):
        self.data, self.pos, self.end = data, 0, len(data) * 8

    def read(self, n: int) -> int:
        start, stop = self.pos, self.pos + n
        if stop > self.end:
            raise ValueError(f"brush RLE ends early: needs bit {stop}, has {self.end}")
        self.pos = stop
        first, last = start >> 3, (stop - 1) >> 3
        chunk = int.from_bytes(self.data[first:last + 1], "big")
        return (chunk >> ((last + 1) * 8 - stop)) & ((1 << n) - 1)


def rle_decode(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Decode Label Studio brush RLE to a boolean (height, width) mask: True where the alpha byte is set.

    Raises ValueError on anything malformed: values that are not bytes, a value count other than
    height*width*4, bad header fields, runs past the end, a stream that ends early.
    """
    if isinstance(height, bool) or isinstance(width, bool) or not isinstance(height, (int, np.integer)) \
            or not isinstance(width, (int, np.integer)) or height < 1 or width < 1:
        raise ValueError(f"mask size must be positive integers, got {height!r} x {width!r}")
    height, width = int(height), int(width)
    if isinstance(rle, (str, bytes, bytearray, Mapping)) or not isinstance(rle, (Sequence, np.ndarray)):
        raise ValueError(f"brush RLE must be a list of ints, got {type(rle).__name__}")
    values = list(rle)
    for k, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= 255:
            raise ValueError(f"brush RLE value {k} is {v!r}, not an int in 0..255")
    if len(values) * 8 < _RLE_HEADER_BITS:
        raise ValueError(f"brush RLE has {len(values)} bytes, shorter than its header")
    bits = _Bits(bytes(int(v) for v in values))
    num = bits.read(32)
    expected = height * width * 4
    if num != expected:
        raise ValueError(f"brush RLE holds {num} values, a {width}x{height} RGBA mask has {expected}")
    word_size = bits.read(5) + 1
    sizes = [bits.read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8 if word_size <= 8 else np.uint32)
    i = 0
    while i < num:
        repeat = bits.read(1)
        j = i + 1 + bits.read(sizes[bits.read(2)])
        if j > num:
            raise ValueError(f"brush RLE run reaches value {j}, past the {num} values")
        if repeat:
            out[i:j] = bits.read(word_size)
        else:
            for k in range(i, j):
                out[k] = bits.read(word_size)
        i = j
    return out.reshape(height, width, 4)[:, :, 3] != 0
