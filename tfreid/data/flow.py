"""Dense optical flow of a tracklet's frames, as the converter stores it and a3d reads it.

The one implementation of the flow computation: ``python -m data_pipelines.convert
--optical_flow`` calls it for every tracklet (``data_pipelines/optical_flow.py`` writes the
result as PNGs), and a client that serves an exported a3d model calls :func:`clip_flow` on
its own frames, so the model sees at serving time the flow it was trained on.

A3D (papers/a3d_recurrent_3d_attention.md, section III-A) feeds a two-stream network with the
optical flow between adjacent frames, ``F in R^{2 x (L-1) x H x W}``, and "repeats the last
optical flow map as the temporal padding" so the flow sequence has the frame count L. The
paper computes flow with FlowNet; here it is OpenCV's (library choice: no FlowNet weights):

| method | OpenCV | note |
| --- | --- | --- |
| `dis` (default) | `cv2.DISOpticalFlow` | Dense Inverse Search, preset `fast` by default |
| `farneback` | `cv2.calcOpticalFlowFarneback` | polynomial expansion, 3 levels, 15 px window |
| `tvl1` | `cv2.optflow.DualTVL1OpticalFlow` | only with opencv-contrib (cv2.optflow) |

Flow ``f = (dx, dy)`` is in pixels of the frame, from frame t to frame t+1, on the gray
frames. The converter stores it quantised, ``q = clip(round(f * scale) + 128, 0, 255)`` with
``scale = 6.4`` (1/6.4 pixel steps, +-20 pixels range), and the input pipeline gives the
model ``(q - 128) / scale`` resampled to the clip size (dx, dy scaled with the width and
height). :func:`clip_flow` returns exactly that dequantised flow for frames at their own size.
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


def resize_flow(flow: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Resizes a flow field to `shape` (H, W), scaling dx and dy with the width and height."""
  h, w = flow.shape[:2]
  if (h, w) == tuple(shape):
    return flow
  out = cv2.resize(flow, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
  out[..., 0] *= shape[1] / w
  out[..., 1] *= shape[0] / h
  return out


def tracklet_flows(grays: Sequence[np.ndarray], computer: FlowComputer) -> list[np.ndarray]:
  """Float flow per frame of a tracklet (A3D section III-A padding): frame t's flow is the
  flow from t to t+1 at frame t's size; the last frame repeats the flow before it (resized
  to its size if needed); a one-frame tracklet gets zero flow."""
  if len(grays) == 1:
    return [np.zeros(grays[0].shape[:2] + (2,), np.float32)]
  flows = [computer(prev, nxt) for prev, nxt in zip(grays[:-1], grays[1:])]
  flows.append(resize_flow(flows[-1], grays[-1].shape[:2]))
  return flows


def to_gray(frame) -> np.ndarray:
  """A frame as the converter sees it: uint8 gray [H, W]. Encoded bytes (JPEG/PNG) are
  decoded straight to gray as the converter decodes them; uint8 arrays are RGB [H, W, 3]
  (converted with OpenCV's RGB->gray weights) or gray [H, W]."""
  if isinstance(frame, (bytes, bytearray)):
    gray = cv2.imdecode(np.frombuffer(frame, np.uint8),
                        cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
    if gray is None:
      raise ValueError("clip_flow: a frame's bytes do not decode as an image.")
    return gray
  frame = np.ascontiguousarray(frame)
  if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or (frame.ndim == 3
                                                             and frame.shape[-1] != 3):
    raise ValueError(f"clip_flow takes encoded frames or uint8 RGB [H, W, 3] / gray [H, W] "
                     f"arrays, got {frame.dtype} {frame.shape}.")
  return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame


def clip_flow(frames, method: str = "dis", dis_preset: str = "fast",
              scale: float = DEFAULT_FLOW_SCALE) -> np.ndarray:
  """The flow a3d reads for consecutive frames, as the converter computes and stores it.

  Args:
    frames: a tracklet's (or clip's) consecutive frames of one size: encoded images (the
      bytes of the frame files: gives the converter's flow exactly) or uint8 arrays, RGB
      [H, W, 3] or gray [H, W]; or one uint8 array [T, H, W, 3].
    method, dis_preset, scale: the converter's --flow_method, --dis_preset and flow scale
      (manifest["flow"]); the defaults are the converter's.

  Returns:
    float32 [T, H, W, 2], (dx, dy) in pixels, quantised and dequantised as stored
    (multiples of 1/scale, +-20 px at scale 6.4). Resize it with the frames (scaling dx by
    the width ratio and dy by the height ratio) to the model's input size, or send the
    frames at the model's size.
  """
  grays = [to_gray(f) for f in frames]
  if not grays:
    raise ValueError("clip_flow needs at least one frame.")
  if len({g.shape for g in grays}) > 1:
    raise ValueError(f"clip_flow needs frames of one size, got {sorted({g.shape for g in grays})}.")
  flows = tracklet_flows(grays, FlowComputer(method, dis_preset))
  return np.stack([dequantize(quantize(f, scale)[0], scale) for f in flows])
