"""BN-Inception (Ioffe and Szegedy, "Batch Normalization", 2015), per frame, in pieces.

The stal method (Chen et al., Table I) splits this network at inception-4b: a low-level CNN
(conv1 .. inception-4b, stride 16), the global trunk (inception-4c .. 5b) and copies of
4c, 4d, 4e as part networks. So this file builds the stem and any run of inception modules
as separate Keras layers instead of one model; :func:`module_channels` gives each one's
output width.

Every convolution is Conv (with bias, as the Caffe model) -> BatchNorm -> ReLU. Each
:class:`ConvBN` carries the name of its Caffe layer (``caffe_name``, e.g.
``inception_3a/double_3x3_1``), which is what :func:`load_caffe_weights` matches, so the
part-network copies of 4c-4e load the same ImageNet weights as the trunk.

``INCEPTION_SPECS`` lists each module as
``(1x1, 3x3_reduce, 3x3, double_3x3_reduce, double_3x3, pool, pool_proj, stride)``; a 0
``1x1`` or ``pool_proj`` means the branch is absent (the stride-2 modules 3c and 4e pass
the max-pooled input through). Output widths: 3a 256, 3b 320, 3c 576, 4a-4d 576, 4e 1024,
5a-5b 1024, as Table I of stal prints. ``width_divisor`` divides every channel count
(the small configurations of the tests and the synthetic experiment).

Pooling in Caffe rounds output sizes up; here every pooling uses ``same`` padding, which
gives the same sizes for inputs whose sides are multiples of 32 (library choice: Keras has
no ceil mode; the model checks the frame size).
"""

from __future__ import annotations

import keras
import numpy as np

# name: (1x1, 3x3_reduce, 3x3, double_3x3_reduce, double_3x3, pool, pool_proj, stride)
INCEPTION_SPECS = {
    "3a": (64, 64, 64, 64, 96, "avg", 32, 1),
    "3b": (64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": (0, 128, 160, 64, 96, "max", 0, 2),
    "4a": (224, 64, 96, 96, 128, "avg", 128, 1),
    "4b": (192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": (160, 128, 160, 128, 160, "avg", 96, 1),
    "4d": (96, 128, 192, 160, 192, "avg", 96, 1),
    "4e": (0, 128, 192, 192, 256, "max", 0, 2),
    "5a": (352, 192, 320, 160, 224, "avg", 128, 1),
    "5b": (352, 192, 320, 192, 224, "max", 128, 1),
}
MODULE_ORDER = tuple(INCEPTION_SPECS)
# The stem: (caffe name, filters, kernel, stride), with max pools 3x3/2 after conv1 and conv2.
STEM_SPECS = (("conv1/7x7_s2", 64, 7, 2), ("conv2/3x3_reduce", 64, 1, 1),
              ("conv2/3x3", 192, 3, 1))
STEM_CHANNELS = 192


def _width(channels: int, divisor: int) -> int:
  return max(1, channels // divisor) if channels else 0


def module_channels(name: str, divisor: int = 1) -> int:
  """Output channels of inception module `name` ("3a" .. "5b"), or of the stem ("stem")."""
  if name == "stem":
    return _width(STEM_CHANNELS, divisor)
  if name not in INCEPTION_SPECS:
    raise ValueError(f"unknown BN-Inception module {name!r}; expected 'stem' or one of "
                     f"{MODULE_ORDER}.")
  one, _, three, _, double, _, proj, stride = INCEPTION_SPECS[name]
  out = _width(one, divisor) + _width(three, divisor) + _width(double, divisor)
  if proj:
    return out + _width(proj, divisor)
  previous = MODULE_ORDER[MODULE_ORDER.index(name) - 1] if name != "3a" else "stem"
  return out + module_channels(previous, divisor)  # the max-pooled input passes through


@keras.saving.register_keras_serializable(package="tfreid")
class ConvBN(keras.layers.Layer):
  """Conv2D (with bias) -> BatchNorm (eps 1e-5) -> ReLU; `caffe_name` names its weights."""

  def __init__(self, filters: int, kernel_size: int, strides: int = 1,
               caffe_name: str = "", **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.caffe_name = caffe_name
    self.conv = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                                    name="conv")
    self.bn = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn")

  def build(self, input_shape):
    self.conv.build(input_shape)
    self.bn.build(tuple(input_shape[:-1]) + (self.filters,))
    self.built = True

  def call(self, x, training=None):
    return keras.ops.relu(self.bn(self.conv(x), training=training))

  def compute_output_shape(self, input_shape):
    return self.conv.compute_output_shape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                  caffe_name=self.caffe_name)
    return config


@keras.saving.register_keras_serializable(package="tfreid")
class InceptionModule(keras.layers.Layer):
  """One BN-Inception module (``INCEPTION_SPECS[module]``): the concatenation of a 1x1
  branch, a 1x1 -> 3x3 branch, a 1x1 -> 3x3 -> 3x3 branch and a pooling branch (with a 1x1
  projection, or passed through in the stride-2 modules)."""

  def __init__(self, module: str, width_divisor: int = 1, **kwargs):
    super().__init__(**kwargs)
    if module not in INCEPTION_SPECS:
      raise ValueError(f"unknown BN-Inception module {module!r}; expected one of "
                       f"{MODULE_ORDER}.")
    self.module = module
    self.width_divisor = width_divisor
    one, reduce3, three, reduce_d, double, pool, proj, stride = INCEPTION_SPECS[module]
    w = lambda c: _width(c, width_divisor)
    prefix = f"inception_{module}/"
    # Every ConvBN is a named attribute (checkpoints track attributes; nested lists of
    # layers are not tracked); `_branches` lists their names per branch.
    branches = []
    if one:
      branches.append([("b1x1", w(one), 1, 1, "1x1")])
    branches.append([("b3x3_reduce", w(reduce3), 1, 1, "3x3_reduce"),
                     ("b3x3", w(three), 3, stride, "3x3")])
    branches.append([("bd_reduce", w(reduce_d), 1, 1, "double_3x3_reduce"),
                     ("bd_1", w(double), 3, 1, "double_3x3_1"),
                     ("bd_2", w(double), 3, stride, "double_3x3_2")])
    self._branches = []
    for branch in branches:
      names = []
      for attr, filters, kernel, strides, caffe in branch:
        setattr(self, attr, ConvBN(filters, kernel, strides, caffe_name=prefix + caffe,
                                   name=attr))
        names.append(attr)
      self._branches.append(tuple(names))
    self._branches = tuple(self._branches)
    pool_cls = keras.layers.AveragePooling2D if pool == "avg" else keras.layers.MaxPooling2D
    self.pool = pool_cls(3, strides=stride, padding="same", name="pool")
    self.pool_proj = (ConvBN(w(proj), 1, caffe_name=prefix + "pool_proj", name="pool_proj")
                      if proj else None)

  def build(self, input_shape):
    for branch in self._branches:
      shape = input_shape
      for attr in branch:
        layer = getattr(self, attr)
        layer.build(shape)
        shape = layer.compute_output_shape(shape)
    if self.pool_proj is not None:
      self.pool_proj.build(input_shape)
    self.built = True

  def call(self, x, training=None):
    outs = []
    for branch in self._branches:
      y = x
      for attr in branch:
        y = getattr(self, attr)(y, training=training)
      outs.append(y)
    pooled = self.pool(x)
    outs.append(self.pool_proj(pooled, training=training) if self.pool_proj is not None
                else pooled)
    return keras.ops.concatenate(outs, axis=-1)

  def get_config(self):
    config = super().get_config()
    config.update(module=self.module, width_divisor=self.width_divisor)
    return config


def stem(width_divisor: int = 1, name: str = "stem") -> keras.Sequential:
  """conv1 7x7/2 64, max pool 3x3/2, conv2 1x1 64, conv2 3x3 192, max pool 3x3/2 (Table I):
  [N, H, W, 3] -> [N, H/8, W/8, 192]."""
  (n1, f1, k1, s1), (n2, f2, k2, s2), (n3, f3, k3, s3) = STEM_SPECS
  w = lambda c: _width(c, width_divisor)
  return keras.Sequential([
      ConvBN(w(f1), k1, s1, caffe_name=n1, name="conv1"),
      keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1"),
      ConvBN(w(f2), k2, s2, caffe_name=n2, name="conv2_reduce"),
      ConvBN(w(f3), k3, s3, caffe_name=n3, name="conv2"),
      keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")], name=name)


def modules(first: str, last: str, width_divisor: int = 1,
            name: str = "inception") -> keras.Sequential:
  """Inception modules `first` .. `last` (inclusive, in ``MODULE_ORDER``) in sequence."""
  for m in (first, last):
    if m not in INCEPTION_SPECS:
      raise ValueError(f"unknown BN-Inception module {m!r}; expected one of {MODULE_ORDER}.")
  i, j = MODULE_ORDER.index(first), MODULE_ORDER.index(last)
  if j < i:
    raise ValueError(f"BN-Inception modules {first!r}..{last!r}: {last!r} comes before "
                     f"{first!r}.")
  return keras.Sequential([InceptionModule(m, width_divisor, name=f"inception_{m}")
                           for m in MODULE_ORDER[i:j + 1]], name=name)


def low_level(last: str = "4b", width_divisor: int = 1, name: str = "low_level"):
  """The stem and modules 3a .. `last`: stal's low-level CNN (split at 4b, stride 16)."""
  return keras.Sequential([stem(width_divisor), modules("3a", last, width_divisor)],
                          name=name)


# ----------------------------------------------------------------------------- weights

WEIGHTS_FORMAT = """\
BN-Inception ImageNet weights for tfreid: a NumPy .npz file with, for every Caffe layer
NAME of the public BN-Inception model (conv1/7x7_s2, conv2/3x3_reduce, conv2/3x3,
inception_3a/1x1, inception_3a/3x3_reduce, ..., inception_5b/pool_proj):
  NAME/weights   float32 [out, in, kh, kw]  (Caffe's blob layout)
  NAME/bias      float32 [out]
  NAME_bn/scale, NAME_bn/shift, NAME_bn/mean, NAME_bn/variance   float32 [out]
(the BN layer's moving mean and variance already divided by Caffe's scale factor). The
channels of conv1 are in Caffe's BGR order, which tfreid's "caffe" input normalisation
matches. Convert a caffemodel with any Caffe or caffemodel reader into these keys."""


def conv_bn_layers(layer) -> list:
  """Every :class:`ConvBN` inside `layer` (a layer, model or list of them)."""
  if isinstance(layer, (list, tuple)):
    return [c for item in layer for c in conv_bn_layers(item)]
  if isinstance(layer, ConvBN):
    return [layer]
  return [sub for sub in layer._flatten_layers(include_self=False)  # pylint: disable=protected-access
          if isinstance(sub, ConvBN)]


def load_caffe_weights(layers, path: str, skip_missing: bool = False) -> int:
  """Loads BN-Inception weights (``WEIGHTS_FORMAT``) into every :class:`ConvBN` of `layers`
  by its ``caffe_name``; returns how many layers were loaded. Every layer must be built.

  A missing key or a shape that disagrees (e.g. a ``width_divisor`` > 1) is an error naming
  the layer; ``skip_missing`` leaves layers whose keys are absent as they are.
  """
  with np.load(path) as data:
    blobs = {k: data[k] for k in data.files}
  loaded = 0
  for layer in conv_bn_layers(layers):
    name = layer.caffe_name
    keys = [f"{name}/weights", f"{name}/bias", f"{name}_bn/scale", f"{name}_bn/shift",
            f"{name}_bn/mean", f"{name}_bn/variance"]
    missing = [k for k in keys if k not in blobs]
    if missing:
      if skip_missing:
        continue
      raise ValueError(f"{path}: no {missing[0]!r} for layer {layer.path} (Caffe layer "
                       f"{name!r}). Expected format:\n{WEIGHTS_FORMAT}")
    kernel = np.transpose(blobs[keys[0]], (2, 3, 1, 0))  # [out, in, kh, kw] -> [kh, kw, in, out]
    if tuple(kernel.shape) != tuple(layer.conv.kernel.shape):
      raise ValueError(f"{path}: {keys[0]} has shape {blobs[keys[0]].shape} (Caffe layout), "
                       f"layer {layer.path} needs {tuple(layer.conv.kernel.shape)} "
                       "(kh, kw, in, out); weights load only at width_divisor=1.")
    layer.conv.kernel.assign(kernel)
    layer.conv.bias.assign(blobs[keys[1]])
    layer.bn.gamma.assign(blobs[keys[2]])
    layer.bn.beta.assign(blobs[keys[3]])
    layer.bn.moving_mean.assign(blobs[keys[4]])
    layer.bn.moving_variance.assign(blobs[keys[5]])
    loaded += 1
  return loaded
