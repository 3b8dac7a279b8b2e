"""Evaluation reports: a Markdown table, a CMC plot, and rank-list images.

Used by `python -m tfreid.evaluate`. Plots use matplotlib's Agg canvas directly (no
pyplot, no global backend switch), so they work without a display and leave the caller's
matplotlib state alone.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

QUERY_COLOR = (0, 0, 255)
CORRECT_COLOR = (0, 255, 0)
WRONG_COLOR = (255, 0, 0)
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)


def _makedirs_for(path: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)


def _cell(value: Any, float_format: str) -> str:
  if isinstance(value, (float, np.floating)):
    return float_format.format(float(value))
  if value is None:
    return ""
  return str(value).replace("|", "\\|").replace("\n", " ")


def write_markdown_table(path: str, rows: Sequence[Mapping[str, Any]], title: str,
                         float_format: str = "{:.4f}") -> str:
  """Writes `rows` as a Markdown table under a `# title` heading; returns the text.

  Columns are the keys of the rows in order of first appearance; a row without a column
  leaves its cell empty. Floats use `float_format`; `|` in values is escaped.
  """
  if isinstance(rows, Mapping) or not all(isinstance(row, Mapping) for row in rows):
    raise ValueError("rows must be a list of dicts (one dict per table row).")
  if not rows:
    raise ValueError("rows is empty: a table needs at least one row.")
  columns: list[str] = []
  for row in rows:
    for key in row:
      if key not in columns:
        columns.append(key)
  lines = [f"# {title}", "",
           "| " + " | ".join(_cell(column, float_format) for column in columns) + " |",
           "|" + "|".join(" --- " for _ in columns) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(_cell(row.get(column), float_format) for column in columns)
                 + " |")
  text = "\n".join(lines) + "\n"
  _makedirs_for(path)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return text


def plot_cmc(path: str, curves: Mapping[str, Any], title: str = "CMC",
             max_rank: int | None = None) -> str:
  """Plots CMC curves (fractions, `cmc[k-1]` = rank-k) as a PNG at `path`; returns `path`.

  Args:
    curves: {name: cmc array}; each name appears in the legend with its rank-1 value.
    max_rank: last rank shown (default: the longest curve).
  """
  if not curves:
    raise ValueError("curves is empty: pass {name: cmc array}.")
  arrays = {}
  for name, cmc in curves.items():
    cmc = np.asarray(cmc, np.float64)
    if cmc.ndim != 1 or cmc.size == 0 or not np.all(np.isfinite(cmc)):
      raise ValueError(f"CMC curve {name!r} must be a non-empty finite 1-D array, got shape "
                       f"{cmc.shape}.")
    arrays[name] = cmc
  last = max_rank or max(cmc.size for cmc in arrays.values())
  figure = Figure(figsize=(6, 4.5), dpi=100)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot(1, 1, 1)
  for name, cmc in arrays.items():
    shown = cmc[:last]
    axes.plot(np.arange(1, shown.size + 1), 100 * shown,
              marker="." if shown.size <= 50 else None,
              label=f"{name} (rank-1 {100 * cmc[0]:.1f}%)")
  axes.set_xlabel("rank")
  axes.set_ylabel("matching rate (%)")
  axes.set_xlim(1, max(last, 2))
  axes.set_ylim(0, 100)
  axes.grid(True, alpha=0.3)
  axes.set_title(title)
  axes.legend(loc="lower right")
  figure.tight_layout()
  _makedirs_for(path)
  figure.savefig(path, format="png")
  return path


def _check_frames(name: str, frames: Any) -> np.ndarray:
  array = np.asarray(frames)
  if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
    raise ValueError(f"{name} must be uint8 [num_frames >= 1, H, W, 3], got {array.dtype} "
                     f"{array.shape}.")
  return array


def _pick(frames: np.ndarray, count: int) -> np.ndarray:
  """`count` frames evenly spread over the tracklet (all of them when it is shorter)."""
  if frames.shape[0] <= count:
    return frames
  return frames[np.round(np.linspace(0, frames.shape[0] - 1, count)).astype(int)]


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  if frame.shape[:2] == (height, width):
    return frame
  return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))


def render_rank_list(query_frames, gallery: Sequence[Any], correct: Sequence[bool],
                     distances: Sequence[float], num_frames: int = 4, border: int = 4,
                     gap: int = 6, cell_size: tuple[int, int] | None = None,
                     text_height: int = 14) -> np.ndarray:
  """Draws a query tracklet beside its ranked gallery tracklets.

  Each tracklet is a column of `num_frames` frames spread evenly over it (top to bottom),
  framed by a `border`-pixel border: blue for the query, green for a correct match, red
  for a wrong one. Above each column: "query" or "rank: distance". The query column is
  followed by a double gap.

  Args:
    query_frames: uint8 [n, H, W, 3].
    gallery: the top-k gallery tracklets in rank order, each uint8 [n_i, H_i, W_i, 3].
    correct: k booleans, True when that gallery tracklet is a true match.
    distances: k distances to the query.
    cell_size: (height, width) every frame is resized to (default: the query's frame size).

  Returns:
    uint8 image [text_height + num_frames * cell_h + 2 * border,
    (k + 1) * (cell_w + 2 * border + gap) + 2 * gap, 3].
  """
  query = _check_frames("query_frames", query_frames)
  tracklets = [_check_frames(f"gallery[{i}]", item) for i, item in enumerate(gallery)]
  if not (len(tracklets) == len(correct) == len(distances)):
    raise ValueError(f"gallery, correct and distances must have the same length (one per "
                     f"ranked gallery tracklet), got {len(tracklets)}, {len(correct)} and "
                     f"{len(distances)}.")
  if num_frames < 1 or border < 0 or gap < 0 or text_height < 0:
    raise ValueError("num_frames must be >= 1 and border, gap, text_height >= 0.")
  cell_h, cell_w = cell_size if cell_size is not None else query.shape[1:3]
  column_w = cell_w + 2 * border
  column_h = num_frames * cell_h + 2 * border
  width = (len(tracklets) + 1) * (column_w + gap) + 2 * gap
  height = text_height + column_h
  image = np.empty((height, width, 3), np.uint8)
  image[:] = BACKGROUND

  columns = [(query, QUERY_COLOR, "query")]
  columns += [(frames, CORRECT_COLOR if ok else WRONG_COLOR, f"{rank}: {float(d):.3g}")
              for rank, (frames, ok, d) in enumerate(zip(tracklets, correct, distances), 1)]
  labels = []
  x = gap
  for index, (frames, color, label) in enumerate(columns):
    image[text_height:text_height + column_h, x:x + column_w] = color
    image[text_height + border:text_height + column_h - border, x + border:x + border + cell_w] \
        = BACKGROUND
    for row, frame in enumerate(_pick(frames, num_frames)):
      top = text_height + border + row * cell_h
      image[top:top + cell_h, x + border:x + border + cell_w] = _resize(frame, cell_h, cell_w)
    labels.append((x, label))
    x += column_w + gap + (gap if index == 0 else 0)
  if text_height > 0:
    _draw_labels(image, labels)
  return image


def _draw_labels(image: np.ndarray, labels) -> None:
  canvas = Image.fromarray(image)
  draw = ImageDraw.Draw(canvas)
  for x, label in labels:
    draw.text((x, 1), label, fill=TEXT_COLOR)
  image[:] = np.asarray(canvas)


def save_png(path: str, image) -> str:
  """Saves a uint8 [H, W, 3] (or [H, W]) image as PNG at `path`; returns `path`."""
  array = np.asarray(image)
  if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3
                                                             and array.shape[-1] != 3):
    raise ValueError(f"image must be uint8 [H, W, 3] or [H, W], got {array.dtype} "
                     f"{array.shape}.")
  _makedirs_for(path)
  Image.fromarray(array).save(path, format="PNG")
  return path
