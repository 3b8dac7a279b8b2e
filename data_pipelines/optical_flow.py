"""Dense optical flow between consecutive frames, quantised to PNG for the TFRecord schema.

A3D (papers/a3d_recurrent_3d_attention.md, section III-A) feeds a two-stream network with
the RGB clip and the optical flow between adjacent frames, `F in R^{2 x (L-1) x H x W}`,
and "repeats the last optical flow map as the temporal padding" so the flow sequence has the
frame count L. The paper computes flow with FlowNet; here it is computed with OpenCV:

| method | OpenCV | note |
| --- | --- | --- |
| `dis` (default) | `cv2.DISOpticalFlow` | Dense Inverse Search, preset `--dis_preset` (fast) |
| `farneback` | `cv2.calcOpticalFlowFarneback` | polynomial expansion, 3 levels, 15 px window |
| `tvl1` | `cv2.optflow.DualTVL1OpticalFlow` | only with opencv-contrib (cv2.optflow) |

Flow `f = (dx, dy)` in pixels is stored per frame as a PNG of uint8 [H, W, 3] whose channels
0, 1 hold `q = clip(round(f * scale) + 128, 0, 255)` for dx, dy and channel 2 is 0
(tfreid/data/schema.py); `f = (q - 128) / scale`. With the default scale 6.4 the stored
range is [-20, +19.8] pixels at 1/6.4 pixel resolution (a choice of this converter: person
crops of 256x128 rarely move more than 20 pixels between frames; larger values saturate and
are counted in manifest["flow"]["clipped_values"]).

Flow of frame t is the flow from frame t to frame t+1, computed at frame t's size (frame
t+1 is resized to it when a tracklet mixes frame sizes); the last frame repeats the flow
before it (resized and rescaled to its size if needed); a one-frame tracklet gets zero flow.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

FLOW_METHODS = ("dis", "farneback", "tvl1")
DIS_PRESETS = {"ultrafast": "DISOPTICAL_FLOW_PRESET_ULTRAFAST",
               "fast": "DISOPTICAL_FLOW_PRESET_FAST",
               "medium": "DISOPTICAL_FLOW_PRESET_MEDIUM"}
DEFAULT_FLOW_SCALE = 6.4
# zlib level of the flow PNGs: 1 is about 20% larger than 3 and 20% faster to write.
PNG_COMPRESSION = 1


def check_method(method: str, dis_preset: str = "fast") -> None:
  """Raises ValueError when `method` (or the DIS preset) is unknown or unavailable here."""
  if method not in FLOW_METHODS:
    raise ValueError(f"unknown optical flow method {method!r}; expected one of "
                     f"{', '.join(FLOW_METHODS)}.")
  if method == "dis" and dis_preset not in DIS_PRESETS:
    raise ValueError(f"unknown DIS preset {dis_preset!r}; expected one of "
                     f"{', '.join(DIS_PRESETS)}.")
  if method == "tvl1" and not hasattr(cv2, "optflow"):
    raise ValueError("--flow_method=tvl1 needs cv2.optflow, which this OpenCV build lacks "
                     f"(cv2 {cv2.__version__}). Install opencv-contrib-python-headless in "
                     "place of opencv-python-headless, or use --flow_method=dis.")


class FlowComputer:
  """Computes dense flow (float32 [H, W, 2], (dx, dy) in pixels) between two gray frames."""

  def __init__(self, method: str = "dis", dis_preset: str = "fast"):
    check_method(method, dis_preset)
    self.method = method
    self.dis_preset = dis_preset

  def _new_impl(self):
    # A fresh OpenCV object per frame pair: DIS keeps buffers between calls that change its
    # next result, which would make the flow depend on which tracklets a worker saw before.
    if self.method == "dis":
      return cv2.DISOpticalFlow_create(getattr(cv2, DIS_PRESETS[self.dis_preset]))
    return cv2.optflow.DualTVL1OpticalFlow_create()

  def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Flow from `prev` to `nxt` (uint8 gray [H, W]); `nxt` is resized to `prev`'s size."""
    if nxt.shape != prev.shape:
      nxt = cv2.resize(nxt, (prev.shape[1], prev.shape[0]), interpolation=cv2.INTER_LINEAR)
    if self.method == "farneback":
      return cv2.calcOpticalFlowFarneback(prev, nxt, None, pyr_scale=0.5, levels=3,
                                          winsize=15, iterations=3, poly_n=5,
                                          poly_sigma=1.2, flags=0)
    return self._new_impl().calc(prev, nxt, None)


def quantize(flow: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
  """float [H, W, 2] -> (uint8 [H, W, 2] `clip(round(f * scale) + 128, 0, 255)`, #clipped)."""
  q = np.rint(np.asarray(flow, np.float64) * scale) + 128.0
  clipped = int(np.count_nonzero((q < 0) | (q > 255)))
  return np.clip(q, 0, 255).astype(np.uint8), clipped


def dequantize(q: np.ndarray, scale: float) -> np.ndarray:
  """uint8 [..., 2] -> float32 flow in pixels, `(q - 128) / scale`."""
  return (np.asarray(q, np.float32) - 128.0) / np.float32(scale)


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


def _resize_flow(flow: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Resizes a flow field to `shape` (H, W), scaling dx and dy with the width and height."""
  h, w = flow.shape[:2]
  if (h, w) == tuple(shape):
    return flow
  out = cv2.resize(flow, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
  out[..., 0] *= shape[1] / w
  out[..., 1] *= shape[0] / h
  return out


def tracklet_flow(grays: Sequence[np.ndarray], computer: FlowComputer, scale: float
                  ) -> tuple[list[bytes], int, int]:
  """Flow PNGs for a tracklet's gray frames, one per frame (A3D section III-A padding).

  Returns:
    (pngs, clipped, values): `len(pngs) == len(grays)`; `clipped` of the `values` quantised
    numbers fell outside [0, 255] and were saturated.
  """
  pngs, clipped, values = [], 0, 0

  def add(flow):
    nonlocal clipped, values
    q, c = quantize(flow, scale)
    clipped += c
    values += q.size
    pngs.append(encode_flow_png(q))

  if len(grays) == 1:
    add(np.zeros(grays[0].shape[:2] + (2,), np.float32))
    return pngs, clipped, values
  flow = None
  for prev, nxt in zip(grays[:-1], grays[1:]):
    flow = computer(prev, nxt)
    add(flow)
  add(_resize_flow(flow, grays[-1].shape[:2]))
  return pngs, clipped, values
