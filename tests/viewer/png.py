"""Just enough PNG decoding to read a pixel of a Chromium screenshot (8-bit RGBA or RGB,
not interlaced), so the overlay's transparency can be checked without an imaging library."""

from __future__ import annotations

import struct
import zlib


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


class Png:
    def __init__(self, data: bytes):
        assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
        position, idat = 8, b""
        while position < len(data):
            (length,) = struct.unpack(">I", data[position : position + 4])
            kind = data[position + 4 : position + 8]
            body = data[position + 8 : position + 8 + length]
            if kind == b"IHDR":
                self.width, self.height, depth, colour, _, _, interlace = struct.unpack(
                    ">IIBBBBB", body
                )
                assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour)
                self.channels = 4 if colour == 6 else 3
            elif kind == b"IDAT":
                idat += body
            position += 12 + length
        self.rows = self._unfilter(zlib.decompress(idat))

    def _unfilter(self, raw: bytes) -> list[bytearray]:
        stride, bpp = self.width * self.channels, self.channels
        rows: list[bytearray] = []
        previous = bytearray(stride)
        for y in range(self.height):
            start = y * (stride + 1)
            kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
            for x in range(stride):
                left = line[x - bpp] if x >= bpp else 0
                up = previous[x]
                up_left = previous[x - bpp] if x >= bpp else 0
                if kind == 1:
                    line[x] = (line[x] + left) & 0xFF
                elif kind == 2:
                    line[x] = (line[x] + up) & 0xFF
                elif kind == 3:
                    line[x] = (line[x] + (left + up) // 2) & 0xFF
                elif kind == 4:
                    line[x] = (line[x] + _paeth(left, up, up_left)) & 0xFF
            rows.append(line)
            previous = line
        return rows

    def pixel(self, x: int, y: int) -> tuple[int, ...]:
        """(r, g, b, a) at x, y; alpha is 255 for an RGB image."""
        start = x * self.channels
        values = tuple(self.rows[y][start : start + self.channels])
        return values if self.channels == 4 else (*values, 255)
