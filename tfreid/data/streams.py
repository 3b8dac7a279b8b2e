"""The input streams a model can read, and how each is shaped, checked and asked for.

A method declares the streams it reads by name (`tfreid.models.input_streams`); the data
layer owns what each name means: its dtype and shape in a batch, how the pipeline reads and
augments it (`tfreid.data.pipeline`, `tfreid.data.augment`), and the converter flag that
adds it to a dataset. The trainer, evaluation and export follow the declaration and list no
stream themselves.

| stream      | batch dtype, shape          | converter flag   | meaning                         |
| ----------- | --------------------------- | ---------------- | ------------------------------- |
| `clips`     | uint8 [B, T, H, W, 3]       | (always there)   | RGB frames 0..255               |
| `flow`      | float32 [B, T, H, W, 2]     | `--optical_flow` | optical flow (dx, dy) in pixels |
| `keypoints` | float32 [B, T, 14, 3]       | `--keypoints`    | (x, y, visibility) per joint    |
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfreid.data import schema


@dataclasses.dataclass(frozen=True)
class Stream:
  """One kind of model input.

  Attributes:
    name: the key in batches, model inputs and serving signatures.
    dtype: its dtype in a batch.
    frame_shape: the shape of one frame's value; a clip is [T] + frame_shape, with None for
      the frame height and width (data.height, data.width).
    converter_flag: the `python -m data_pipelines.convert` flag that adds it ("" for the
      RGB frames every dataset has).
    description: one line for messages and the model card.
  """
  name: str
  dtype: tf.DType
  frame_shape: tuple
  converter_flag: str
  description: str

  def clip_shape(self, seq_len: int, height: int, width: int) -> list[int]:
    """[T, ...] of one clip of this stream, with the frame size filled in."""
    sizes = iter((height, width))
    return [seq_len] + [next(sizes) if d is None else d for d in self.frame_shape]


STREAMS = {
    "clips": Stream("clips", tf.uint8, (None, None, 3), "",
                    "RGB frames, uint8 0..255"),
    "flow": Stream("flow", tf.float32, (None, None, 2), "--optical_flow",
                   "dense optical flow (dx, dy) of each frame to the next, in pixels"),
    "keypoints": Stream("keypoints", tf.float32, (schema.NUM_JOINTS, 3), "--keypoints=FILE",
                        f"{schema.NUM_JOINTS} body joints per frame: x, y in pixels, "
                        "visibility (all zeros where the frame has none)"),
}


class StreamError(ValueError):
  """A model declares a stream the data layer does not know."""


def check_names(streams, where: str = "the model") -> tuple[str, ...]:
  """`streams` as a tuple, checked: known names, `clips` first and present."""
  streams = tuple(streams)
  unknown = [s for s in streams if s not in STREAMS]
  if unknown or not streams or streams[0] != "clips":
    raise StreamError(f"{where} declares the input streams {list(streams)}; a model reads "
                      f"'clips' first, then any of {sorted(set(STREAMS) - {'clips'})}.")
  return streams


def dummy_inputs(streams, data, batch: int = 1) -> dict:
  """A zero batch of `streams` with the pipeline's shapes (data: a DataConfig)."""
  return {name: tf.zeros([batch] + STREAMS[name].clip_shape(data.seq_len, data.height,
                                                            data.width), STREAMS[name].dtype)
          for name in check_names(streams)}


def random_inputs(streams, data, batch: int, seed: int = 0) -> dict:
  """A random NumPy batch of `streams` with the pipeline's shapes and value ranges, for
  timing a model without data: frames uniform 0..255, flow uniform in [-2, 2] pixels,
  keypoints uniform over the frame with every joint visible."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  out = {}
  for name in check_names(streams):
    shape = [batch] + STREAMS[name].clip_shape(data.seq_len, data.height, data.width)
    if name == "clips":
      out[name] = rng.integers(0, 256, shape, np.uint8)
    elif name == "flow":
      out[name] = rng.uniform(-2.0, 2.0, shape).astype(np.float32)
    else:
      joints = rng.uniform(0.0, 1.0, shape).astype(np.float32)
      joints[..., 0] *= data.width - 1
      joints[..., 1] *= data.height - 1
      joints[..., 2] = 1.0
      out[name] = joints
  return out


def model_inputs(batch: dict, streams) -> dict:
  """The part of a pipeline batch the model reads."""
  return {name: batch[name] for name in streams}


def converter_flags(streams) -> list[str]:
  """The `python -m data_pipelines.convert` flags that add `streams` to a dataset (the
  keypoints flag as ``--keypoints=FILE``, FILE standing for the joints file)."""
  return [STREAMS[name].converter_flag for name in check_names(streams)
          if STREAMS[name].converter_flag]


def main(argv=None) -> None:
  """``python -m tfreid.data.streams --experiment=NAME[:VARIANT] [--override=K=V ...]``
  prints the converter flags the experiment's model needs, space-separated (nothing for a
  clips-only model); the Makefile's quickstart converts its data with them."""
  import argparse  # pylint: disable=import-outside-toplevel
  # Imported here: tfreid.config and the models import this module.
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  from tfreid.models import contract  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog="python -m tfreid.data.streams",
                                   description=main.__doc__)
  parser.add_argument("--experiment", required=True)
  parser.add_argument("--override", action="append", default=[])
  args = parser.parse_args(argv)
  config = cfg.build_config(args.experiment, overrides=args.override)
  print(" ".join(converter_flags(contract.input_streams(config))))


if __name__ == "__main__":
  main()
