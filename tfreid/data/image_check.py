"""Structural checks of encoded frames (JPEG, PNG) without decoding them.

A record's CRC-32Cs prove that its bytes are the ones the converter wrote, not that the
frames in it were whole: a source JPEG damaged before conversion (a truncated copy, a
damaged byte) is stored as it was, and TensorFlow's decoder treats much of such damage
as a warning only (libjpeg prints "Corrupt JPEG data: ..." and the decoder returns an
image with the damage in it), or fails with an error that names no file. `jpeg_problem`
and `png_problem` say what is wrong with an encoded frame, in a few microseconds (no
pixel is decoded); the reader (reader.RecordReader) runs them on every frame it reads
and the converter on every source frame.

What is checked (JPEG, ITU-T T.81 annex B): the start-of-image marker; that every marker
segment's length stays inside the data; the frame header (SOF: precision, a non-zero
size, 1..4 components with sampling factors 1..4, its length), Huffman and quantisation
table segments (their lengths add up), the restart interval and scan headers (components
declared by the frame header); that the entropy-coded data of each scan holds no byte
0xFF other than stuffed 0xFF00, restart markers (in sequence 0..7 when a restart
interval is set) or fill bytes before the next marker; and that an end-of-image marker
follows at least one scan (a truncated file has none). Cost: about 5 microseconds for a
5 KB 256x128 frame (one scan of its compressed data for a byte 0xFF not followed by 0x00;
a header already seen is not parsed again). PNG: the signature, the chunk
chain (lengths inside the data), each chunk's CRC-32, an IHDR first with a non-zero size,
at least one IDAT, and IEND.

What no structural check can see: a damaged byte inside JPEG entropy-coded data that
leaves the markers intact. A Huffman decoder resynchronises after such damage, and the
format holds no checksum, so the damaged image decodes (libjpeg warns in some cases,
"extraneous bytes before marker", and says nothing in most); only a checksum of the
original file could tell. Inside a PNG the chunk CRCs cover this.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Optional

_SOI = b"\xff\xd8"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Frame-header markers SOF0..SOF15 (0xC4 DHT, 0xC8 JPG and 0xCC DAC are not frame headers).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_RST = range(0xD0, 0xD8)
_NOT_STUFFED = re.compile(rb"\xff[^\x00]")


# Headers (the bytes up to the first scan's data) that passed, with their restart
# interval: the frames of a dataset share a few headers (one encoder, size and quality),
# and a header seen before is not parsed again. Bounded.
_GOOD_HEADERS: dict[bytes, int] = {}
_MAX_GOOD_HEADERS = 4096


def jpeg_problem(data: bytes) -> Optional[str]:
  """What is structurally wrong with a JPEG file (module docstring), or None."""
  n = len(data)
  if n < 4 or not data.startswith(_SOI):
    return "it does not start with a JPEG start-of-image marker"
  first_scan = data.find(b"\xff\xda")
  if 0 < first_scan < n - 4:
    header_end = first_scan + 2 + (data[first_scan + 2] << 8 | data[first_scan + 3])
    restart_interval = _GOOD_HEADERS.get(data[:header_end])
    if restart_interval is not None:
      # The full parse would go the same way up to here.
      pos = _scan_end(data, header_end, restart_interval)
      if isinstance(pos, str):
        return pos
      if pos == n - 2 or data[pos:pos + 2] == b"\xff\xd9":
        return None
  return _full_problem(data)


def _full_problem(data: bytes) -> Optional[str]:
  n = len(data)
  pos = 2
  components: Optional[set] = None
  restart_interval = 0
  scans = 0
  while True:
    if pos >= n:
      return "it ends before its end-of-image marker (truncated)"
    if data[pos] != 0xFF:
      return f"byte {pos} should start a marker and is 0x{data[pos]:02x}"
    while pos < n and data[pos] == 0xFF:  # fill bytes
      pos += 1
    if pos >= n:
      return "it ends before its end-of-image marker (truncated)"
    marker = data[pos]
    pos += 1
    if marker == 0xD9:
      if not scans:
        return "its end-of-image marker comes before any image data"
      return None
    if marker < 0xC0 or marker == 0xD8 or marker in _RST:  # 0x02..0xBF are reserved
      return f"unexpected marker 0xff{marker:02x} at byte {pos - 2}"
    if pos + 2 > n:
      return "it ends inside a marker segment (truncated)"
    length = data[pos] << 8 | data[pos + 1]
    end = pos + length
    if length < 2 or end > n:
      return (f"the segment of marker 0xff{marker:02x} at byte {pos - 2} declares "
              f"{length} bytes, past the end of the file (truncated)")
    body = data[pos + 2:end]
    if marker in _SOF:
      if components is not None:
        return "it has two frame headers"
      if len(body) < 6:
        return "its frame header is too short"
      precision, height, width, count = struct.unpack(">BHHB", body[:6])
      if not 2 <= precision <= 16 or height == 0 or width == 0 or not 1 <= count <= 4 \
          or len(body) != 6 + 3 * count:
        return (f"its frame header is invalid (precision {precision}, size {width}x{height}, "
                f"{count} components, {length} bytes)")
      components = set()
      for i in range(count):
        cid, sampling, table = body[6 + 3 * i:9 + 3 * i]
        if not (1 <= sampling >> 4 <= 4 and 1 <= sampling & 15 <= 4 and table <= 3):
          return f"component {cid} of its frame header has invalid sampling factors or table"
        components.add(cid)
    elif marker == 0xC4:
      i = 0
      while i < len(body):
        if i + 17 > len(body) or body[i] >> 4 > 1 or body[i] & 15 > 3:
          return "a Huffman table segment is malformed"
        count = sum(body[i + 1:i + 17])
        if count > 256:
          return "a Huffman table declares more than 256 codes"
        i += 17 + count
      if i != len(body):
        return "a Huffman table segment's length does not match its tables"
    elif marker == 0xDB:
      i = 0
      while i < len(body):
        if body[i] >> 4 > 1 or body[i] & 15 > 3:
          return "a quantisation table segment is malformed"
        i += 1 + 64 * (1 + (body[i] >> 4))
      if i != len(body):
        return "a quantisation table segment's length does not match its tables"
    elif marker == 0xDD:
      if len(body) != 2:
        return "its restart interval segment is malformed"
      restart_interval = body[0] << 8 | body[1]
    elif marker == 0xDA:
      if components is None:
        return "a scan comes before the frame header"
      count = body[0] if body else 0
      if not 1 <= count <= 4 or len(body) != 4 + 2 * count:
        return f"a scan header is malformed ({count} components, {length} bytes)"
      if any(body[1 + 2 * i] not in components for i in range(count)):
        return "a scan names a component the frame header does not declare"
      scans += 1
      if scans == 1 and data.find(b"\xff\xda") == pos - 2 and \
          len(_GOOD_HEADERS) < _MAX_GOOD_HEADERS:
        _GOOD_HEADERS[data[:end]] = restart_interval
      pos = _scan_end(data, end, restart_interval)
      if isinstance(pos, str):
        return pos
      continue
    pos = end


def _scan_end(data: bytes, start: int, restart_interval: int):
  """Where the entropy-coded data starting at `start` ends (the position of the marker
  after it), or a problem (str)."""
  pos, expected = start, 0
  while True:
    # The next 0xFF that is not stuffed 0xFF00 (one regular-expression scan in C).
    found = _NOT_STUFFED.search(data, pos)
    if found is None:
      return "its compressed data ends without an end-of-image marker (truncated)"
    pos = found.start()
    following = data[pos + 1]
    if following == 0xFF:
      pos += 1
      continue
    if following in _RST:
      if not restart_interval:
        return f"restart marker at byte {pos} without a restart interval"
      if following - 0xD0 != expected:
        return (f"restart marker {following - 0xD0} at byte {pos} where {expected} is due "
                "(damaged compressed data)")
      expected = (expected + 1) % 8
      pos += 2
      continue
    # A marker ends the scan; a run of fill bytes before it belongs to the marker.
    while pos > start and data[pos - 1] == 0xFF:
      pos -= 1
    return pos


def png_problem(data: bytes) -> Optional[str]:
  """What is structurally wrong with a PNG file (module docstring), or None."""
  n = len(data)
  if not data.startswith(_PNG_SIGNATURE):
    return "it does not start with the PNG signature"
  pos, first, idat = 8, True, False
  while True:
    if pos + 8 > n:
      return "it ends before its IEND chunk (truncated)"
    length, kind = struct.unpack(">I4s", data[pos:pos + 8])
    end = pos + 12 + length
    if length > 0x7FFFFFFF or end > n:
      return (f"chunk {kind!r} at byte {pos} declares {length} bytes, past the end of the "
              "file (truncated)")
    if zlib.crc32(data[pos + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
      return f"chunk {kind.decode('latin-1')!r} at byte {pos} fails its CRC"
    if first:
      if kind != b"IHDR" or length != 13:
        return "its first chunk is not IHDR"
      width, height = struct.unpack(">II", data[pos + 8:pos + 16])
      if width == 0 or height == 0:
        return f"its header gives an empty size {width}x{height}"
      first = False
    elif kind == b"IDAT":
      idat = True
    elif kind == b"IEND":
      return None if idat else "it has no image data (IDAT chunk)"
    pos = end


def frame_problem(data: bytes, frame_format: str) -> Optional[str]:
  """`jpeg_problem` or `png_problem` of a frame of a record of `frame_format` ("jpeg" or
  "png"); a record's frames all have its format (schema.py)."""
  if frame_format == "png":
    return png_problem(data)
  return jpeg_problem(data)
