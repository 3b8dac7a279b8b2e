"""VGG-16 (Simonyan and Zisserman 2015), the CNN of siamese_convgru's ``_V`` rows (table III).

The layers and names of ``keras.applications.VGG16``: five blocks of 3x3 convolutions with
ReLU (64, 128, 256, 512, 512 channels; 2, 2, 3, 3, 3 convolutions), each followed by a 2x2
max-pooling of stride 2; then ``fc1`` and ``fc2`` (4096 each, ReLU; fc6 and fc7 in Caffe's
naming). Endpoints: ``block5_pool`` ("the last convolution" of table III: 7 x 7 x 512 for a
224 x 224 frame, so K = 7 as with GoogLeNet) and ``fc2`` (fc7, the "VGG 16 + FC-GRU"
baseline's feature, which needs 224 x 224 frames). ``width`` scales the convolution channel
counts (1.0: the real network).

ImageNet weights come from ``keras.applications.VGG16(weights="imagenet")`` (downloaded by
Keras or read from its cache ``~/.keras/models``) or from a Keras weights file of that model
(``model.backbone.weights_path``: ``.weights.h5`` saved by Keras 3, or the Keras 2 HDF5 file
Keras downloads); layers are matched by name (:func:`load_vgg16_weights`). Input convention:
Caffe's (BGR, ImageNet mean subtracted: ``ClipNormalization("caffe")``), as those weights
expect.

Parameters: 14,714,688 to block5_pool; 134,260,544 to fc2.
"""

from __future__ import annotations

import keras

from tfreid.backbones import weights as weights_lib

BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
ENDPOINTS = ("block5_pool", "fc2")


def output_channels(width: float = 1.0, endpoint: str = "block5_pool") -> int:
  return 4096 if endpoint == "fc2" else max(1, int(round(512 * width)))


def vgg16(width: float = 1.0, last_endpoint: str = "block5_pool",
          name: str = "vgg16") -> keras.Model:
  """VGG-16 to `last_endpoint`: normalised frames [N, H, W, 3] -> dict of endpoints
  (``block5_pool`` [N, h, w, c]; ``fc2`` [N, 4096])."""
  if last_endpoint not in ENDPOINTS:
    raise ValueError(f"vgg16 last_endpoint={last_endpoint!r}; expected one of {ENDPOINTS}.")
  if width <= 0:
    raise ValueError(f"vgg16 width must be > 0, got {width}.")
  fc = last_endpoint == "fc2"
  inputs = keras.Input((224, 224, 3) if fc else (None, None, 3), name="frames")
  x = inputs
  for b, (channels, convs) in enumerate(BLOCKS, start=1):
    for c in range(1, convs + 1):
      x = keras.layers.Conv2D(max(1, int(round(channels * width))), 3, padding="same",
                              activation="relu", name=f"block{b}_conv{c}")(x)
    x = keras.layers.MaxPooling2D(2, 2, name=f"block{b}_pool")(x)
  endpoints = {"block5_pool": x}
  if fc:
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(4096, activation="relu", name="fc1")(x)
    endpoints["fc2"] = keras.layers.Dense(4096, activation="relu", name="fc2")(x)
  return keras.Model(inputs, endpoints, name=name)


def load_vgg16_weights(model: keras.Model, source) -> list[str]:
  """Copies weights by layer name into `model` (a :func:`vgg16`) from `source`: a Keras
  model with ``keras.applications.VGG16``'s layer names, or a weights file path (read by
  :func:`tfreid.backbones.weights.read_weights_file`). Every layer of `model` with weights
  must be found with the same shapes; returns the names loaded."""
  if isinstance(source, str):
    found = weights_lib.read_weights_file(source)
    where = source
  else:
    found = {layer.name: layer.get_weights() for layer in source.layers if layer.weights}
    where = f"model {source.name!r}"
  loaded = []
  for layer in model.layers:
    if not layer.weights:
      continue
    arrays = found.get(layer.name)
    if not arrays:
      raise ValueError(f"{where} has no weights for VGG-16 layer {layer.name!r}.")
    expected = [tuple(w.shape) for w in layer.weights]
    if [tuple(a.shape) for a in arrays] != expected:
      raise ValueError(f"{where}: layer {layer.name!r} has shapes "
                       f"{[tuple(a.shape) for a in arrays]}, the model expects {expected}.")
    layer.set_weights(arrays)
    loaded.append(layer.name)
  return loaded


def imagenet_vgg16(include_top: bool) -> keras.Model:
  """``keras.applications.VGG16`` with its ImageNet weights (downloaded by Keras once)."""
  return keras.applications.VGG16(weights="imagenet", include_top=include_top)
