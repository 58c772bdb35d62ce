"""Just enough of a PNG decoder (stdlib only) to count what a screenshot shows: 8-bit
RGB/RGBA, not interlaced, the five scanline filters of the PNG spec."""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from itertools import accumulate

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def _add(a: int, b: int) -> int:
    return (a + b) & 255


def _unfilter(kind: int, line: bytearray, prior: bytearray, bpp: int) -> bytearray:
    if kind == 1:  # Sub: a running sum per channel
        for c in range(bpp):
            line[c::bpp] = bytes(accumulate(line[c::bpp], _add))
    elif kind == 2:  # Up
        line = bytearray((a + b) & 255 for a, b in zip(line, prior, strict=True))
    elif kind == 3:  # Average
        for i in range(len(line)):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + prior[i]) >> 1)) & 255
    elif kind == 4:  # Paeth
        for i in range(len(line)):
            a = line[i - bpp] if i >= bpp else 0
            b = prior[i]
            c = prior[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    elif kind != 0:
        raise ValueError(f"unknown PNG filter {kind}")
    return line


def pixels(png: bytes) -> tuple[int, int, Counter[tuple[int, ...]]]:
    """(width, height, how many pixels of each colour), alpha dropped."""
    if not png.startswith(_SIGNATURE):
        raise ValueError("not a PNG file")
    pos, idat = 8, []
    width = height = depth = ctype = interlace = 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        body = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    if depth != 8 or interlace or ctype not in _CHANNELS:
        raise ValueError(
            f"unsupported PNG: depth {depth}, colour type {ctype}, interlace {interlace}"
        )
    bpp = _CHANNELS[ctype]
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prior = bytearray(stride)
    colours: Counter[tuple[int, ...]] = Counter()
    keep = 3 if bpp >= 3 else 1
    for y in range(height):
        start = y * (stride + 1)
        line = _unfilter(raw[start], bytearray(raw[start + 1 : start + 1 + stride]), prior, bpp)
        colours.update(zip(*(line[c::bpp] for c in range(keep)), strict=True))
        prior = line
    return width, height, colours


def near(colours: Counter[tuple[int, ...]], rgb: tuple[int, int, int], tolerance: int = 6) -> int:
    """Pixels within ``tolerance`` of ``rgb`` on every channel."""
    return sum(
        n
        for c, n in colours.items()
        if all(abs(x - y) <= tolerance for x, y in zip(c, rgb, strict=False))
    )
