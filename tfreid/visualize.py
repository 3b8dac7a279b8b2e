"""Attention drawn on the frames a model looked at: TensorBoard images and PNG pictures.

A model shows what it attends to in one of two ways:

* its outputs: every output whose name starts with ``attention`` is drawn by
  :func:`default_overlays` when its shape says what it is:

  | shape            | meaning                               | drawn as                       |
  | ---------------- | ------------------------------------- | ------------------------------ |
  | [B, T, h, w]     | a spatial map per frame               | heat map over each frame       |
  | [B, T, K, h, w]  | K spatial maps per frame (K heads)    | one row of frames per head     |
  | [B, T]           | a weight per frame (temporal)         | a bar under each frame         |
  | [B, T, K]        | K weights per frame (per part)        | K bars under each frame        |

* or its own hook, ``model.attention_overlays(inputs, outputs) -> {name: images}`` (images
  float [N, H', W', 3] in [0, 1]), for attention that is not a map: boxes, bins, part
  scores. The helpers below (:func:`heatmap_overlay`, :func:`draw_boxes`,
  :func:`weight_bars`, :func:`clip_strip`) are what such a hook draws with.

The trainer writes these as ``attention/<name>`` image summaries; ``python -m
tfreid.visualize --model_dir=RUN --output=attention.png`` writes one test tracklet's picture.

Heat maps are scaled per map (its own minimum to maximum), so a picture shows where a map
looks, not how peaked it is compared with another map (a hook can scale a clip's maps
together, ``heatmap_overlay(..., together=True)``); weight bars are scaled to the largest
weight of the clip.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
  # The command line: TensorFlow's start-up notices hidden before it is imported.
  from tfreid import console as _console  # pylint: disable=ungrouped-imports
  _console.quiet_tensorflow_start()

import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

# A perceptually ordered colour ramp (dark blue -> cyan -> yellow -> red) for heat maps.
_RAMP = np.array([[0.05, 0.05, 0.35], [0.0, 0.55, 0.85], [0.3, 0.85, 0.45],
                  [1.0, 0.85, 0.1], [0.85, 0.1, 0.05]], np.float32)
# Distinct colours for boxes and parts (RGB in [0, 1]).
PART_COLORS = np.array([[0.95, 0.25, 0.2], [0.2, 0.75, 0.25], [0.25, 0.45, 0.95],
                        [0.95, 0.8, 0.1], [0.75, 0.3, 0.85], [0.1, 0.8, 0.85],
                        [0.95, 0.55, 0.15], [0.6, 0.6, 0.6]], np.float32)


def as_float_frames(frames) -> tf.Tensor:
  """Frames as float32 in [0, 1] (uint8 0..255 are divided by 255)."""
  frames = tf.convert_to_tensor(frames)
  if frames.dtype == tf.uint8:
    return tf.cast(frames, tf.float32) / 255.0
  return tf.clip_by_value(tf.cast(frames, tf.float32), 0.0, 1.0)


def colorize(values) -> tf.Tensor:
  """[..., 1] values in [0, 1] -> [..., 3] colours of the heat ramp (linear between stops)."""
  values = tf.clip_by_value(tf.cast(values, tf.float32), 0.0, 1.0)[..., 0]
  position = values * (len(_RAMP) - 1)
  low = tf.minimum(tf.cast(tf.floor(position), tf.int32), len(_RAMP) - 2)
  frac = (position - tf.cast(low, tf.float32))[..., tf.newaxis]
  ramp = tf.constant(_RAMP)
  return tf.gather(ramp, low) * (1.0 - frac) + tf.gather(ramp, low + 1) * frac


def normalize_maps(maps) -> tf.Tensor:
  """[N, h, w] -> [N, h, w] each map scaled to [0, 1] by its own minimum and maximum (a
  constant map becomes 0)."""
  maps = tf.cast(maps, tf.float32)
  low = tf.reduce_min(maps, axis=[1, 2], keepdims=True)
  high = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
  return (maps - low) / tf.maximum(high - low, 1e-12)


def heatmap_overlay(frames, maps, alpha: float = 0.55, together: bool = False) -> tf.Tensor:
  """Each map [h, w] resized to its frame and blended over it as a heat map.

  Args:
    frames: [N, H, W, 3] uint8 or float in [0, 1].
    maps: [N, h, w] (any non-negative scale).
    alpha: the heat map's weight where the map is at its maximum; it falls to alpha / 3
      where the map is at its minimum, so the frame stays visible where the model does not
      look.
    together: scale all N maps by their common minimum and maximum instead of each by its
      own, so that frames can be compared (attention spread over a whole clip).

  Returns: float32 [N, H, W, 3] in [0, 1].
  """
  frames = as_float_frames(frames)
  maps = tf.cast(maps, tf.float32)
  if together:
    low, high = tf.reduce_min(maps), tf.reduce_max(maps)
    maps = (maps - low) / tf.maximum(high - low, 1e-12)
  else:
    maps = normalize_maps(maps)
  maps = maps[..., tf.newaxis]
  size = tf.shape(frames)[1:3]
  maps = tf.clip_by_value(tf.image.resize(maps, size, method="bilinear"), 0.0, 1.0)
  weight = alpha * (1.0 + 2.0 * maps) / 3.0
  return frames * (1.0 - weight) + colorize(maps) * weight


def draw_boxes(frames, boxes, colors=None, thickness: int = 1) -> tf.Tensor:
  """Rectangles drawn on frames.

  Args:
    frames: [N, H, W, 3] uint8 or float in [0, 1].
    boxes: [N, M, 4] (y0, x0, y1, x1) as fractions of the frame height and width.
    colors: [M, 3] RGB in [0, 1] (default: `PART_COLORS`).
    thickness: line width in pixels.

  Returns: float32 [N, H, W, 3].
  """
  images = as_float_frames(frames)
  boxes = tf.cast(boxes, tf.float32)
  m = int(boxes.shape[1])
  colors = PART_COLORS[np.arange(m) % len(PART_COLORS)] if colors is None else colors
  colors = np.asarray(colors, np.float32)
  height = tf.cast(tf.shape(images)[1], tf.float32)
  width = tf.cast(tf.shape(images)[2], tf.float32)
  for i in range(max(1, thickness)):
    # Each extra line one pixel inside the previous one.
    inset = tf.constant([i, i, -i, -i], tf.float32) / tf.stack([height, width, height, width])
    images = tf.image.draw_bounding_boxes(images, boxes + inset, colors)
  return images


def weight_bars(frames, weights, bar_height: int = 4, colors=None) -> tf.Tensor:
  """Frames with one horizontal bar per weight under each, its length proportional to the
  weight (the clip's largest weight fills the frame width).

  Args:
    frames: [T, H, W, 3] one clip's frames (uint8 or float in [0, 1]).
    weights: [T] or [T, K] non-negative weights (e.g. temporal attention; K parts).
    bar_height: rows per bar.
    colors: [K, 3] bar colours (default: white for one weight, `PART_COLORS` for K).

  Returns: float32 [T, H + K * bar_height, W, 3].
  """
  images = as_float_frames(frames)
  weights = tf.cast(weights, tf.float32)
  if weights.shape.rank == 1:
    weights = weights[:, tf.newaxis]
  k = int(weights.shape[1])
  if colors is None:
    colors = np.ones((1, 3), np.float32) if k == 1 else PART_COLORS[np.arange(k) % len(PART_COLORS)]
  width = tf.shape(images)[2]
  scaled = weights / tf.maximum(tf.reduce_max(weights), 1e-12)
  columns = tf.cast(tf.range(width), tf.float32)[tf.newaxis, tf.newaxis, :]
  filled = tf.cast(columns < scaled[..., tf.newaxis] * tf.cast(width, tf.float32),
                   tf.float32)  # [T, K, W]
  bars = filled[..., tf.newaxis] * tf.constant(np.asarray(colors, np.float32))[:, tf.newaxis]
  bars = tf.repeat(bars, bar_height, axis=1)  # [T, K * bar_height, W, 3]
  return tf.concat([images, bars], axis=1)


def clip_strip(rows) -> tf.Tensor:
  """Rows of per-frame images [T, H_r, W, 3] -> one image [sum H_r + gaps, T * W + gaps, 3]:
  frames left to right, rows top to bottom, one-pixel gaps."""
  pieces = []
  for r, row in enumerate(rows):
    row = as_float_frames(row)
    t = int(row.shape[0])
    gap = tf.ones_like(row[0][:, :1])
    frames = []
    for i in range(t):
      if i:
        frames.append(gap)
      frames.append(row[i])
    if r:
      pieces.append(tf.ones_like(tf.concat(frames, axis=1)[:1]))
    pieces.append(tf.concat(frames, axis=1))
  return tf.concat(pieces, axis=0)


def _pad_width(images, width):
  pad = width - int(images.shape[1])
  return tf.pad(images, [[0, 0], [0, pad], [0, 0]], constant_values=1.0) if pad > 0 else images


def default_overlays(inputs: dict, outputs: dict, max_clips: int = 2) -> dict:
  """Images [n, H', W', 3] per ``attention*`` output of a known shape (module docstring):
  for each of the first `max_clips` clips, its frames (top row) with the attention under
  them. Outputs of other shapes are left out."""
  clips = inputs["clips"]
  n = min(max_clips, int(clips.shape[0]))
  t = int(clips.shape[1])
  result = {}
  for key in sorted(outputs):
    if not key.startswith("attention"):
      continue
    value = tf.cast(outputs[key], tf.float32)
    if value.shape.rank >= 4 and value.shape[-1] == 1:
      value = value[..., 0]
    shape = value.shape
    if shape.rank < 2 or shape[1] != t:
      continue
    pictures = []
    for b in range(n):
      frames = clips[b]
      if shape.rank == 4:  # [B, T, h, w]
        rows = [frames, heatmap_overlay(frames, value[b])]
      elif shape.rank == 5:  # [B, T, K, h, w]
        heads = tf.transpose(value[b], [1, 0, 2, 3])
        rows = [frames] + [heatmap_overlay(frames, heads[k]) for k in range(int(shape[2]))]
      elif shape.rank in (2, 3):  # [B, T] or [B, T, K]
        rows = [weight_bars(frames, value[b])]
      else:
        rows = None
      if rows is None:
        break
      pictures.append(clip_strip(rows))
    if pictures:
      result[key] = tf.stack(pictures)
  return result


def attention_overlays(model, inputs: dict, outputs: dict, max_clips: int = 2) -> dict:
  """The model's own overlays (`attention_overlays` hook) or :func:`default_overlays`.
  Every value is float32 [n, H', W', 3] in [0, 1]."""
  hook = getattr(model, "attention_overlays", None)
  if callable(hook):
    inputs = {k: v[:max_clips] for k, v in inputs.items()}
    outputs = {k: v[:max_clips] for k, v in outputs.items()}
    drawn = hook(inputs, outputs)
  else:
    drawn = default_overlays(inputs, outputs, max_clips)
  result = {}
  for key, images in drawn.items():
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or images.shape[-1] != 3:
      raise ValueError(f"attention overlay {key!r} has shape {images.shape}: a model's "
                       "attention_overlays must return [N, H, W, 3] images in [0, 1].")
    result[key] = tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 1.0)
  return result


def picture(overlays: dict) -> np.ndarray:
  """All overlays of one clip stacked top to bottom (the first image of each, in name
  order), as uint8 [H, W, 3]; a thin grey line separates them."""
  images = [tf.convert_to_tensor(v)[0] for _, v in sorted(overlays.items())]
  if not images:
    raise ValueError("the model returned no attention to draw (no attention* output of a "
                     "known shape and no attention_overlays hook).")
  width = max(int(im.shape[1]) for im in images)
  parts = []
  for i, im in enumerate(images):
    if i:
      parts.append(tf.fill([3, width, 3], 0.5))
    parts.append(_pad_width(im, width))
  return tf.cast(tf.round(tf.concat(parts, axis=0) * 255.0), tf.uint8).numpy()


def test_clip(config, position: int, partition: str = "query") -> dict:
  """The first test clip of the tracklet at `position` of a test partition, with every
  stream the model reads, as the evaluation reads it (batch of one)."""
  from tfreid.data import pipeline  # pylint: disable=import-outside-toplevel
  from tfreid.data import reader  # pylint: disable=import-outside-toplevel
  from tfreid.models import contract  # pylint: disable=import-outside-toplevel
  from tfreid.training import evaluation  # pylint: disable=import-outside-toplevel
  streams = contract.input_streams(config)
  protocol, _ = evaluation.resolve_protocol(config)
  index = reader.load_partition(config.data.data_dir, partition, split=config.data.split,
                                protocol=protocol)
  if not 0 <= position < len(index.pids):
    raise ValueError(f"--tracklet={position}: the {partition} partition of "
                     f"{config.data.data_dir} has {len(index.pids)} tracklets (0.."
                     f"{len(index.pids) - 1}).")
  dataset = pipeline.make_test_dataset(config, partition, protocol=protocol, index=index,
                                       streams=streams)
  for batch in dataset:
    rows = np.flatnonzero(batch["index"].numpy() == position)
    if rows.size:
      first = int(rows[0])
      return {k: batch[k][first:first + 1] for k in streams}
  raise ValueError(f"tracklet {position} of {partition!r} produced no test clip.")


def write_png(path: str, image: np.ndarray) -> None:
  """Writes uint8 [H, W, 3] as a PNG (through a temporary file, renamed when complete)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  tf.io.write_file(tmp, tf.io.encode_png(image))
  os.replace(tmp, path)


def main(argv=None) -> int:
  """``python -m tfreid.visualize --model_dir=RUN --output=PNG [--tracklet=N]
  [--partition=query] [--data_dir=DIR] [--checkpoint=latest] [--scale=3]``: one test
  tracklet's first clip with every attention the model draws, as one PNG."""
  import argparse  # pylint: disable=import-outside-toplevel
  from tfreid import console  # pylint: disable=import-outside-toplevel
  from tfreid.data import streams as streams_lib  # pylint: disable=import-outside-toplevel
  from tfreid.training import restore  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog="python -m tfreid.visualize",
                                   description=main.__doc__)
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--output", required=True, help="PNG file to write.")
  parser.add_argument("--tracklet", type=int, default=0,
                      help="Position of the tracklet in the partition (default 0).")
  parser.add_argument("--partition", default="query")
  parser.add_argument("--data_dir", default="", help="Default: the run's data.data_dir.")
  parser.add_argument("--checkpoint", default="latest")
  parser.add_argument("--scale", type=int, default=3,
                      help="Pixel repeat of the picture (small frames are hard to see).")
  args = parser.parse_args(argv)

  def run_it():
    run = restore.load_run(args.model_dir, args.checkpoint)
    config = run.config
    if args.data_dir:
      config.data.data_dir = args.data_dir
    inputs = test_clip(config, args.tracklet, args.partition)
    outputs = run.model(streams_lib.model_inputs(inputs, tuple(inputs)), training=False)
    image = picture(attention_overlays(run.model, inputs, outputs, max_clips=1))
    if args.scale > 1:
      image = np.repeat(np.repeat(image, args.scale, axis=0), args.scale, axis=1)
    write_png(args.output, image)
    print(f"{args.output}: {image.shape[1]}x{image.shape[0]} pixels, tracklet "
          f"{args.tracklet} of {args.partition} ({config.model.name}, "
          f"{os.path.basename(run.checkpoint_path)})")
    return 0

  return console.run_cli(run_it)


if __name__ == "__main__":
  import sys  # pylint: disable=import-outside-toplevel
  sys.exit(main())
