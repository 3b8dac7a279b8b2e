"""GoogLeNet (Inception v1, Szegedy et al. 2015), the CNN of siamese_convgru (section III-A).

The BVLC Caffe GoogLeNet without its auxiliary classifiers and without the final classifier.
Layer names are Caffe's with "/" replaced by "_" (``conv1_7x7_s2``, ``inception_3a_1x1``),
which are also the names of the common Caffe-to-TensorFlow conversion of the ImageNet model.

| stage        | layers                                                    | 224 x 224 input |
| ------------ | --------------------------------------------------------- | --------------- |
| conv1        | 7x7 conv 64 stride 2 (pad 3); 3x3 max-pool s2; LRN         | 56 x 56 x 64    |
| conv2        | 1x1 conv 64; 3x3 conv 192; LRN; 3x3 max-pool s2            | 28 x 28 x 192   |
| inception_3  | 3a (256), 3b (480); 3x3 max-pool s2                       | 14 x 14 x 480   |
| inception_4  | 4a (512), 4b (512), 4c (512), 4d (528), 4e (832); pool s2 | 7 x 7 x 832     |
| inception_5  | 5a (832), 5b (1024)                                       | 7 x 7 x 1024    |
| pool5        | 7x7 average pooling (the "fc" feature of the FC-GRU rows) | 1024            |

An inception module concatenates 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool -> 1x1 (every
convolution with bias and ReLU). Caffe's max-pooling rounds the output size up; TensorFlow's
"same" padding gives the same windows here (the extra window at the end), and conv1 pads 3
pixels on every side as Caffe does. LRN: local_size 5, alpha 1e-4, beta 0.75 (Caffe divides
alpha by local_size). ``width`` scales every channel count (1.0: the real network; smaller
for the synthetic configuration).

Parameters (width 1, to inception_5b): 5,973,552, i.e. the 6,998,552 of the ImageNet
classifier model minus its 1000-way classifier (1,025,000) and its auxiliary heads.

Weights (:func:`load_googlenet_weights`): a NumPy file, either ``.npz`` with arrays named
``<layer>/weights`` (kernel, [kh, kw, in, out], TensorFlow layout) and ``<layer>/biases``, or
``.npy`` holding a pickled dict ``{layer: {"weights": kernel, "biases": bias}}`` (the layout
of the caffe-tensorflow conversion of ``bvlc_googlenet.caffemodel``). Layer names as above.
The network expects Caffe's input convention: BGR, ImageNet mean subtracted on the 0..255
scale (``ClipNormalization("caffe")``).
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

# name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection)
INCEPTION_SPECS = {
    "inception_3a": (64, 96, 128, 16, 32, 32),
    "inception_3b": (128, 128, 192, 32, 96, 64),
    "inception_4a": (192, 96, 208, 16, 48, 64),
    "inception_4b": (160, 112, 224, 24, 64, 64),
    "inception_4c": (128, 128, 256, 24, 64, 64),
    "inception_4d": (112, 144, 288, 32, 64, 64),
    "inception_4e": (256, 160, 320, 32, 128, 128),
    "inception_5a": (256, 160, 320, 32, 128, 128),
    "inception_5b": (384, 192, 384, 48, 128, 128),
}
ENDPOINTS = ("conv2", "inception_3b", "inception_4e", "inception_5b", "pool5")
# Max-pooling of stride 2 after these modules.
_POOL_AFTER = {"inception_3b": "pool3_3x3_s2", "inception_4e": "pool4_3x3_s2"}


def scaled(channels: int, width: float) -> int:
  return max(1, int(round(channels * width)))


def output_channels(width: float = 1.0) -> int:
  """Channels of inception_5b (and pool5): 1024 at width 1."""
  spec = INCEPTION_SPECS["inception_5b"]
  return sum(scaled(spec[i], width) for i in (0, 2, 4, 5))


@keras.saving.register_keras_serializable(package="tfreid")
class LocalResponseNormalization(keras.layers.Layer):
  """Caffe's across-channel LRN: x / (1 + alpha / n * sum_{n neighbours} x^2)^beta."""

  def __init__(self, local_size: int = 5, alpha: float = 1e-4, beta: float = 0.75, **kwargs):
    super().__init__(**kwargs)
    self.local_size, self.alpha, self.beta = local_size, alpha, beta

  def call(self, x):
    y = tf.nn.local_response_normalization(tf.cast(x, tf.float32),
                                           depth_radius=self.local_size // 2, bias=1.0,
                                           alpha=self.alpha / self.local_size, beta=self.beta)
    return tf.cast(y, self.compute_dtype)

  def get_config(self):
    config = super().get_config()
    config.update({"local_size": self.local_size, "alpha": self.alpha, "beta": self.beta})
    return config


def _conv(x, filters, kernel, name, strides=1, padding="same"):
  return keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding,
                             activation="relu", name=name)(x)


def _inception(x, name, spec, width):
  c1, c3r, c3, c5r, c5, cp = (scaled(c, width) for c in spec)
  b1 = _conv(x, c1, 1, f"{name}_1x1")
  b3 = _conv(_conv(x, c3r, 1, f"{name}_3x3_reduce"), c3, 3, f"{name}_3x3")
  b5 = _conv(_conv(x, c5r, 1, f"{name}_5x5_reduce"), c5, 5, f"{name}_5x5")
  bp = keras.layers.MaxPooling2D(3, 1, padding="same", name=f"{name}_pool")(x)
  bp = _conv(bp, cp, 1, f"{name}_pool_proj")
  return keras.layers.Concatenate(name=f"{name}_output")([b1, b3, b5, bp])


def googlenet(width: float = 1.0, last_endpoint: str = "inception_5b",
              name: str = "googlenet") -> keras.Model:
  """GoogLeNet to `last_endpoint` as a functional model: normalised frames [N, H, W, 3] ->
  dict of the endpoints up to it ([N, h, w, c] maps; ``pool5`` [N, c])."""
  if width <= 0:
    raise ValueError(f"googlenet width must be > 0, got {width}.")
  if last_endpoint not in ENDPOINTS:
    raise ValueError(f"googlenet last_endpoint={last_endpoint!r}; expected one of "
                     f"{ENDPOINTS}.")
  inputs = keras.Input((None, None, 3), name="frames")
  endpoints = {}
  x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
  x = _conv(x, scaled(64, width), 7, "conv1_7x7_s2", strides=2, padding="valid")
  x = keras.layers.MaxPooling2D(3, 2, padding="same", name="pool1_3x3_s2")(x)
  x = LocalResponseNormalization(name="pool1_norm1")(x)
  x = _conv(x, scaled(64, width), 1, "conv2_3x3_reduce")
  x = _conv(x, scaled(192, width), 3, "conv2_3x3")
  x = LocalResponseNormalization(name="conv2_norm2")(x)
  x = keras.layers.MaxPooling2D(3, 2, padding="same", name="pool2_3x3_s2")(x)
  endpoints["conv2"] = x
  done = last_endpoint == "conv2"
  for module, spec in INCEPTION_SPECS.items():
    if done:
      break
    x = _inception(x, module, spec, width)
    if module in ENDPOINTS:
      endpoints[module] = x
      done = module == last_endpoint
    if module in _POOL_AFTER and not done:
      x = keras.layers.MaxPooling2D(3, 2, padding="same", name=_POOL_AFTER[module])(x)
  if last_endpoint == "pool5":
    endpoints["pool5"] = keras.layers.GlobalAveragePooling2D(name="pool5_7x7_s1")(x)
  return keras.Model(inputs, endpoints, name=name)


def read_googlenet_weights(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{layer: (kernel, bias)} from a weights file in one of the formats of the module
  docstring."""
  if not os.path.exists(path):
    raise ValueError(f"GoogLeNet weights file {path!r} does not exist: convert the ImageNet "
                     "GoogLeNet (bvlc_googlenet) to a .npz with arrays '<layer>/weights' "
                     "([kh, kw, in, out]) and '<layer>/biases', or use caffe-tensorflow's "
                     ".npy, and set model.backbone.weights_path; or train from scratch with "
                     "model.backbone.init=none.")
  if path.endswith(".npz"):
    with np.load(path) as f:
      names = sorted({k.rsplit("/", 1)[0] for k in f.files})
      missing = [n for n in names if f"{n}/weights" not in f.files or f"{n}/biases" not in f.files]
      if missing:
        raise ValueError(f"{path}: every layer needs '<layer>/weights' and '<layer>/biases' "
                         f"arrays; incomplete: {missing[:5]}.")
      return {n: (f[f"{n}/weights"], f[f"{n}/biases"]) for n in names}
  if path.endswith(".npy"):
    # A pickled dict (caffe-tensorflow's layout): only load files you trust.
    content = np.load(path, allow_pickle=True, encoding="latin1").item()
    if not isinstance(content, dict):
      raise ValueError(f"{path}: expected a pickled dict {{layer: {{'weights', 'biases'}}}}.")
    return {n: (np.asarray(v["weights"]), np.asarray(v["biases"])) for n, v in content.items()
            if isinstance(v, dict) and "weights" in v and "biases" in v}
  raise ValueError(f"GoogLeNet weights {path!r}: expected a .npz (arrays '<layer>/weights', "
                   "'<layer>/biases') or a caffe-tensorflow .npy file.")


def load_googlenet_weights(model: keras.Model, path: str) -> list[str]:
  """Loads every convolution of `model` (a :func:`googlenet`) from `path`; returns the
  layers loaded. A layer of the file the model lacks (e.g. the classifier) is ignored; a
  convolution of the model missing from the file, or a shape mismatch, is an error."""
  weights = read_googlenet_weights(path)
  loaded = []
  for layer in model.layers:
    if not isinstance(layer, keras.layers.Conv2D):
      continue
    if layer.name not in weights:
      raise ValueError(f"{path} has no weights for GoogLeNet layer {layer.name!r} (it has "
                       f"{sorted(weights)[:6]} ...).")
    kernel, bias = weights[layer.name]
    if kernel.shape != tuple(layer.kernel.shape) or bias.shape != tuple(layer.bias.shape):
      raise ValueError(f"{path}: layer {layer.name!r} has kernel {kernel.shape} and bias "
                       f"{bias.shape}; the model expects {tuple(layer.kernel.shape)} and "
                       f"{tuple(layer.bias.shape)} (a width other than 1?).")
    layer.set_weights([kernel, bias])
    loaded.append(layer.name)
  return loaded


def save_googlenet_weights(model: keras.Model, path: str) -> None:
  """Writes `model`'s convolutions to a ``.npz`` in the format :func:`load_googlenet_weights`
  reads."""
  arrays = {}
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      kernel, bias = layer.get_weights()
      arrays[f"{layer.name}/weights"] = kernel
      arrays[f"{layer.name}/biases"] = bias
  np.savez(path, **arrays)
