"""Optical flow for the converter's `--optical_flow`: the flow of every frame, quantised to PNG
for the TFRecord schema.

The flow itself (methods, the A3D section III-A padding, quantisation) is computed by
:mod:`tfreid.data.flow`, which a serving client also calls (`tfreid.data.flow.clip_flow`),
so a client computes the flow the model was trained on. This module writes it: per frame a
PNG of uint8 [H, W, 3] whose channels 0, 1 hold `q = clip(round(f * scale) + 128, 0, 255)`
for dx, dy and channel 2 is 0 (tfreid/data/schema.py); `f = (q - 128) / scale`. With the
default scale 6.4 the stored range is [-20, +19.8] pixels at 1/6.4 pixel resolution (a choice
of this converter: person crops of 256x128 rarely move more than 20 pixels between frames;
larger values saturate and are counted in manifest["flow"]["clipped_values"]).

Flow of frame t is the flow from frame t to frame t+1, computed at frame t's size (frame
t+1 is resized to it when a tracklet mixes frame sizes); the last frame repeats the flow
before it (resized and rescaled to its size if needed); a one-frame tracklet gets zero flow.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from tfreid.data.flow import (DEFAULT_FLOW_SCALE, DIS_PRESETS, FLOW_METHODS,  # noqa: F401
                              FlowComputer, check_method, dequantize, quantize, resize_flow,
                              tracklet_flows)

# zlib level of the flow PNGs: 1 is about 20% larger than 3 and 20% faster to write.
PNG_COMPRESSION = 1


def encode_flow_png(q: np.ndarray) -> bytes:
  """uint8 [H, W, 2] (dx, dy) -> PNG bytes whose channels (R, G, B) are (dx, dy, 0)."""
  zeros = np.zeros(q.shape[:2], np.uint8)
  # cv2 writes its arrays as BGR, so (0, dy, dx) lands in the file as R=dx, G=dy, B=0.
  ok, buf = cv2.imencode(".png", np.dstack([zeros, q[..., 1], q[..., 0]]),
                         [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
  if not ok:
    raise RuntimeError("cv2.imencode failed to write a flow PNG.")
  return buf.tobytes()


def decode_flow_png(data: bytes, scale: float) -> np.ndarray:
  """Flow PNG bytes -> float32 [H, W, 2] (dx, dy) in pixels."""
  bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if bgr is None:
    raise ValueError("not a decodable flow PNG.")
  return dequantize(np.dstack([bgr[..., 2], bgr[..., 1]]), scale)


def tracklet_flow(grays: Sequence[np.ndarray], computer: FlowComputer, scale: float
                  ) -> tuple[list[bytes], int, int]:
  """Flow PNGs for a tracklet's gray frames, one per frame (A3D section III-A padding,
  `tfreid.data.flow.tracklet_flows`).

  Returns:
    (pngs, clipped, values): `len(pngs) == len(grays)`; `clipped` of the `values` quantised
    numbers fell outside [0, 255] and were saturated.
  """
  pngs, clipped, values = [], 0, 0
  for flow in tracklet_flows(grays, computer):
    q, c = quantize(flow, scale)
    clipped += c
    values += q.size
    pngs.append(encode_flow_png(q))
  return pngs, clipped, values
