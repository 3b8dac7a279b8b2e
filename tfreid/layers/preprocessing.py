"""In-model input preprocessing: uint8 clips -> normalised floats.

The input pipeline keeps frames as uint8 end to end (DESIGN.md: float conversion on the host
costs most of the decode throughput); the model converts and normalises on the accelerator
with :class:`ClipNormalization`.
"""

import keras
from keras import ops

# ImageNet channel statistics in RGB order on the 0..255 scale, per convention:
#   caffe: BGR input, mean subtraction only. The convention the Keras ResNet-50 ImageNet
#          weights (keras.applications.ResNet50, converted from the original Caffe model) were
#          trained with; `keras.applications.resnet50.preprocess_input` applies it.
#   torch: RGB input scaled to [0, 1], then (x - mean) / std with the torchvision statistics.
NORMALIZATION_PRESETS = {
    "caffe": {"mean": (123.68, 116.779, 103.939), "std": (1.0, 1.0, 1.0), "bgr": True},
    "torch": {"mean": (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0),
              "std": (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0), "bgr": False},
}


@keras.saving.register_keras_serializable(package="tfreid")
class ClipNormalization(keras.layers.Layer):
  """Casts uint8 RGB frames to floats and applies ImageNet mean/std normalisation.

  Works on any tensor whose last axis is the 3 RGB channels: clips [B, T, H, W, 3] or frames
  [N, H, W, 3]. The output is ``(x[..., order] - mean[order]) / std[order]`` in the layer's
  compute dtype (bfloat16 under the ``mixed_bfloat16`` policy), where ``order`` reverses the
  channels for the BGR ``caffe`` convention.

  Args:
    mode: ``"caffe"`` (the Keras ResNet-50 ImageNet convention: BGR, mean subtraction on the
      0..255 scale) or ``"torch"`` (RGB, ImageNet mean and std of torchvision). Models whose
      backbone is initialised from Keras ResNet-50 weights use ``"caffe"``.

  Example:
    >>> layer = ClipNormalization("caffe")
    >>> layer(np.zeros((1, 8, 256, 128, 3), np.uint8)).shape
    TensorShape([1, 8, 256, 128, 3])
  """

  def __init__(self, mode: str = "caffe", **kwargs):
    super().__init__(**kwargs)
    if mode not in NORMALIZATION_PRESETS:
      raise ValueError(f"ClipNormalization mode={mode!r} is not known; expected one of "
                       f"{sorted(NORMALIZATION_PRESETS)}.")
    self.mode = mode
    preset = NORMALIZATION_PRESETS[mode]
    order = slice(None, None, -1) if preset["bgr"] else slice(None)
    self._mean = tuple(preset["mean"][order])
    self._inv_std = tuple(1.0 / s for s in preset["std"][order])
    self._bgr = preset["bgr"]

  def build(self, input_shape):
    if input_shape[-1] != 3:
      raise ValueError(f"ClipNormalization expects RGB frames with 3 channels on the last axis, "
                       f"got input shape {input_shape}.")
    self.built = True

  def call(self, inputs):
    x = ops.cast(inputs, "float32")
    if self._bgr:
      x = ops.flip(x, axis=-1)
    x = (x - ops.convert_to_tensor(self._mean, "float32")) * ops.convert_to_tensor(
        self._inv_std, "float32")
    return ops.cast(x, self.compute_dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update({"mode": self.mode})
    return config
