"""Backbone initialisation: 2-D ResNet-50 weights, inflated into ResNet3D, or 3-D weights.

The initialisations of nonlocal_i3d table 3 (``model.backbone.init``):

* ``imagenet``: a 2-D ResNet-50 trained on ImageNet. From ``model.backbone.weights_path`` when
  set, otherwise ``keras.applications.ResNet50(weights="imagenet")`` (downloaded by Keras, or
  read from its cache ``~/.keras/models``).
* ``reid``: a 2-D ResNet-50 trained on ReID data, from ``model.backbone.weights_path``.
* ``kinetics``: 3-D weights of our own ResNet3D (with its non-local blocks), pre-trained on
  Kinetics, from ``model.backbone.weights_path``: a file written by
  ``model.backbone.save_weights("NAME.weights.h5")`` (or ``model.save_weights``) of a model
  with the same backbone configuration, matched strictly by layer name.
* ``none``: the layers' own initialisers.

2-D weight files (read by layer name, :func:`read_weights_file`):

* a Keras 3 ``.weights.h5`` file saved from ``keras.applications.ResNet50`` (with or without
  its top), from our ``resnet2d`` backbone, or from a whole ``temporal_pooling`` model
  (``model.save_weights``);
* a Keras 2 HDF5 weights file with the ``keras.applications`` layer names, such as the file
  Keras itself downloads (``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``).

Inflation (section 3.1): every convolution and BatchNorm of the backbone named like a layer of
the 2-D ResNet-50 (``conv1_conv``, ``conv3_block2_2_conv``, ``conv3_block2_2_bn`` ...) takes
that layer's weights. A spatial 1 x k x k kernel of the 3-D network is the k x k kernel
itself; the temporal k_t x 1 x 1 convolutions keep their identity initialisation and the
non-local blocks their identity-at-start initialisation, so the inflated network equals the 2-D
network on every frame (see :mod:`tfreid.backbones.resnet3d`). Our convolutions have no bias:
a 2-D bias b of a convolution followed by BatchNorm is folded into the BN moving mean
(``BN(Wx + b)`` with mean ``m`` equals ``BN(Wx)`` with mean ``m - b``; in training BN
subtracts the batch mean, which absorbs b).

Cut backbones (``first_stage``/``last_stage`` of :func:`tfreid.backbones.resnet2d.resnet2d`
and :func:`tfreid.backbones.resnet3d.resnet3d`) keep the full network's layer names, so they
load the layers they have, by name, from the same files; a res3..res5 trunk ignores the
file's stem and res2.

Stems on other than RGB frames (``input_channels != 3``): conv1 takes the RGB conv1 kernel
averaged over its 3 input channels and replicated to the stem's channel count
(:func:`cross_modality_kernel`); every other layer loads as usual. This is the "cross
modality pre-training" of Temporal Segment Networks (Wang et al., ECCV 2016, section 3.2:
"average the weights across the RGB channels and replicate this average by the channel
number of temporal network input"). a3d uses it for its optical-flow stream (2 channels, dx
and dy): the a3d paper says only that all its CNNs are pre-trained on ImageNet (section
III-D), and the a3d design note (ambiguities, "Flow") takes this rule for the flow stream's
conv1, under which the order of the flow channels does not matter.
"""

from __future__ import annotations

import os
import re

import h5py
import keras
import numpy as np

from tfreid.layers.non_local import NonLocalBlock

# Layers of the 2-D ResNet-50 that carry weights, in keras.applications naming.
_CONV_NAME = re.compile(r"^(conv1|conv\d_block\d+_\d)_conv$")
_BN_NAME = re.compile(r"^(conv1|conv\d_block\d+_\d)_bn$")


class WeightsError(ValueError):
  """Backbone weights could not be found, read or matched to the network."""


# ------------------------------------------------------------------------------ reading


def read_weight_entries(path: str) -> list[tuple[tuple[str, ...], list[np.ndarray]]]:
  """Reads a Keras weights file into [(layer path, [arrays in the layer's variable order])].

  The layer path is the chain of layer names from the saved object down to the layer, e.g.
  ``("nonlocal_i3d", "resnet3d", "conv3_nonlocal_before_block2", "theta")`` for a sublayer of
  a non-local block in a whole-model file. Handles Keras 3 ``.weights.h5`` files (names are
  stored with each layer's variables) and Keras 2 HDF5 weight files (flat layer names, at the
  root or under ``model_weights``). Layers without variables are left out.
  """
  if not os.path.exists(path):
    raise WeightsError(f"weights file {path!r} does not exist; set model.backbone.weights_path "
                       "to a Keras weights file (e.g. saved with "
                       "keras.applications.ResNet50(...).save_weights('resnet50.weights.h5')).")
  try:
    with h5py.File(path, "r") as f:
      if "layers" in f or "vars" in f:
        return _read_keras3(f, path)
      return _read_keras2(f["model_weights"] if "model_weights" in f else f, path)
  except OSError as e:
    raise WeightsError(f"{path!r} is not a readable HDF5 Keras weights file: {e}") from e


def read_weights_file(path: str) -> dict[str, list[np.ndarray] | None]:
  """{layer name: arrays} of a Keras weights file (see :func:`read_weight_entries`).

  Keyed by the layer's own name; a name used by two layers of the file maps to None.
  """
  weights: dict = {}
  for layer_path, arrays in read_weight_entries(path):
    name = layer_path[-1]
    weights[name] = None if name in weights else arrays
  return weights


def _read_keras3(root, path) -> list:
  entries = []

  def visit(group, prefix):
    own = group.get("vars")
    if isinstance(own, h5py.Group):
      name = own.attrs.get("name")
      if name is None:
        raise WeightsError(f"{path!r} stores no layer names (written by an older Keras 3); "
                           "load it into its model and save it again with this Keras version.")
      prefix = prefix + (str(name),)
      if len(own):
        arrays = []
        for index in range(len(own)):
          dataset = own[str(index)]
          if dataset.attrs.get("dtype") == "bfloat16":
            raise WeightsError(f"{path!r} holds bfloat16 variables (layer {name}); save the "
                               "weights from a float32 model.")
          arrays.append(np.asarray(dataset[()]))
        entries.append((prefix, arrays))
    for key, item in group.items():
      if key != "vars" and isinstance(item, h5py.Group):
        visit(item, prefix)

  visit(root, ())
  return entries


def _read_keras2(root, path) -> list:
  if "layer_names" not in root.attrs:
    raise WeightsError(f"{path!r} is neither a Keras 3 .weights.h5 file nor a Keras 2 HDF5 "
                       "weights file (no 'layers' group, no 'layer_names' attribute).")
  entries = []
  for name in root.attrs["layer_names"]:
    name = name.decode() if isinstance(name, bytes) else str(name)
    group = root[name]
    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in group.attrs.get("weight_names", [])]
    if names:
      entries.append(((name,), [np.asarray(group[n][()]) for n in names]))
  return entries


def imagenet_resnet50_weights() -> dict[str, list[np.ndarray]]:
  """ImageNet ResNet-50 weights from keras.applications (downloaded or from Keras's cache)."""
  try:
    model = keras.applications.ResNet50(weights="imagenet", include_top=False)
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(
        "could not get the ImageNet ResNet-50 weights from keras.applications (it downloads "
        f"them; error: {type(e).__name__}: {e}). Without internet access, run "
        "`keras.applications.ResNet50(weights='imagenet').save_weights('resnet50.weights.h5')` "
        "on a machine that has it (or copy Keras's "
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5) and pass "
        "--override=model.backbone.weights_path=resnet50.weights.h5; or train from scratch "
        "with --override=model.backbone.init=none.") from e
  return {layer.name: [np.asarray(w) for w in layer.get_weights()]
          for layer in model.layers if layer.weights}


# ------------------------------------------------------------------------------ loading


def cross_modality_kernel(rgb_kernel: np.ndarray, input_channels: int) -> np.ndarray:
  """conv1 kernel for `input_channels`-channel frames from an RGB one (TSN cross-modality).

  `rgb_kernel` [k, k, 3, C_out] is averaged over its input-channel axis and the average
  repeated `input_channels` times: [k, k, input_channels, C_out], every input channel with
  the same filter (Wang et al., Temporal Segment Networks, ECCV 2016, section 3.2; used by
  a3d for its 2-channel flow stem, see the module docstring).
  """
  rgb_kernel = np.asarray(rgb_kernel)
  if rgb_kernel.ndim != 4 or rgb_kernel.shape[2] != 3:
    raise WeightsError(f"cross-modality initialisation starts from an RGB conv1 kernel "
                       f"[k, k, 3, C_out], got shape {tuple(rgb_kernel.shape)}.")
  mean = rgb_kernel.mean(axis=2, keepdims=True, dtype=np.float64).astype(rgb_kernel.dtype)
  return np.repeat(mean, input_channels, axis=2)


def load_2d_weights(backbone: keras.Model, weights: dict, source: str = "") -> list[str]:
  """Loads 2-D ResNet weights into a resnet2d or (inflating) a resnet3d backbone, by name.

  Every convolution and BatchNorm of `backbone` named as in the 2-D ResNet-50 must be in
  `weights` with a matching kernel shape; other layers of the backbone (temporal convolutions,
  non-local blocks) keep their initialisation, and layers of the file the backbone lacks (the
  classifier, blocks beyond `block_counts`, a model's head; the stem and early stages a cut
  backbone leaves out) are ignored. A conv1 on ``input_channels != 3`` frames takes the RGB
  conv1 kernel by the cross-modality rule of :func:`cross_modality_kernel`.

  Args:
    backbone: from ``resnet3d.resnet3d`` or ``resnet2d.resnet2d``.
    weights: {layer name: arrays}, from :func:`read_weights_file` or
      :func:`imagenet_resnet50_weights`.
    source: where the weights came from, for error messages.

  Returns:
    Names of the layers that were loaded.
  """
  source = source or "the 2-D weights"
  layers = {layer.name: layer for layer in backbone.layers}
  convs = [name for name in layers if _CONV_NAME.match(name)]
  missing = [n for n in convs if not weights.get(n)]
  missing += [n for n in layers if _BN_NAME.match(n) and not weights.get(n)]
  if missing:
    ambiguous = [n for n in missing if n in weights]
    raise WeightsError(
        f"{source} lack{'s' if len(missing) == 1 else ''} {len(missing)} layer(s) of the "
        f"backbone, e.g. {missing[:4]}"
        + (f" ({ambiguous[:4]} appear more than once)" if ambiguous else "")
        + ". Expected a 2-D ResNet-50 with keras.applications layer names (or a file saved "
        "from our resnet2d backbone or temporal_pooling model).")
  kernels = {}
  for name in convs:  # check everything before changing anything
    kernel, expected = weights[name][0], tuple(layers[name].kernel.shape)
    if (name == "conv1_conv" and tuple(kernel.shape[:2]) + tuple(kernel.shape[3:])
        == expected[:2] + expected[3:] and kernel.shape[2] != expected[2]):
      if kernel.shape[2] != 3:
        raise WeightsError(
            f"{source}: conv1_conv takes {kernel.shape[2]}-channel frames, the backbone "
            f"{expected[2]}-channel ones; a stem on other than RGB frames is initialised from "
            "RGB weights (a 3-channel conv1) only, or from weights of a stem with its own "
            "channel count.")
      kernel = cross_modality_kernel(kernel, expected[2])
    elif tuple(kernel.shape) != expected:
      raise WeightsError(
          f"{source}: layer {name} has a kernel of shape {tuple(kernel.shape)}, the backbone "
          f"expects {expected}. 2-D ResNet-50 weights need model.backbone.base_width=64 (and "
          "block_counts no larger than [3, 4, 6, 3]); use model.backbone.init=none for other "
          "widths.")
    kernels[name] = kernel
  loaded = []
  for name in convs:
    bn_name = name[:-len("_conv")] + "_bn"
    kernel = kernels[name]
    bias = weights[name][1] if len(weights[name]) > 1 else None
    gamma, beta, mean, variance = weights[bn_name]
    if bias is not None:
      mean = mean - bias
    layers[name].set_weights([kernel])
    layers[bn_name].set_weights([gamma, beta, mean, variance])
    loaded += [name, bn_name]
  return loaded


def _weight_units(backbone: keras.Model) -> dict[tuple[str, ...], keras.layers.Layer]:
  """{layer path inside the backbone: layer} for every layer that owns variables."""
  units = {}
  for layer in backbone.layers:
    if isinstance(layer, NonLocalBlock):
      for sub in (layer.theta, layer.phi, layer.g, layer.w_z, layer.w_z_bn):
        units[(layer.name, sub.name)] = sub
    elif layer.weights:
      units[(layer.name,)] = layer
  return units


def load_3d_weights(backbone: keras.Model, path: str) -> list[str]:
  """Loads 3-D ResNet3D weights by layer name, strictly (``model.backbone.init=kinetics``).

  `path` is a Keras weights file written by ``backbone.save_weights`` (or by a whole
  NonLocalI3D model's ``save_weights``) of a ResNet3D with the same block_counts, base_width,
  temporal_kernel and non-local blocks. Every layer of the backbone must be found with the
  same variable shapes, and every backbone layer of the file (names starting with ``conv``)
  must exist in the backbone. Returns the loaded layer paths.
  """
  if not os.path.exists(path):
    raise WeightsError(f"3-D backbone weights file {path!r} does not exist; "
                       "model.backbone.init=kinetics reads model.backbone.weights_path.")
  hint = ("model.backbone.init=kinetics expects a file written by "
          "`model.backbone.save_weights(path)` of a ResNet3D with the same block_counts, "
          "base_width, temporal_kernel and nonlocal_blocks as this config.")
  entries = read_weight_entries(path)
  units = _weight_units(backbone)
  used, problems, matches = set(), [], {}
  for key in units:
    found = [i for i, (layer_path, _) in enumerate(entries)
             if layer_path[-len(key):] == key]
    if len(found) != 1:
      problems.append(f"{'/'.join(key)} {'missing' if not found else 'ambiguous'}")
      continue
    used.add(found[0])
    matches[key] = entries[found[0]][1]
  extra = ["/".join(p) for i, (p, _) in enumerate(entries)
           if i not in used and any(n.startswith("conv") for n in p)]
  problems += [f"{name} not in this backbone" for name in extra]
  for key, arrays in matches.items():
    want = [tuple(w.shape) for w in units[key].weights]
    got = [tuple(a.shape) for a in arrays]
    if want != got:
      problems.append(f"{'/'.join(key)} has shapes {got}, expected {want}")
  if problems:
    raise WeightsError(f"3-D weights {path!r} do not match the backbone "
                       f"({len(problems)} problem(s), e.g. {problems[:4]}). {hint}")
  for key, arrays in matches.items():
    units[key].set_weights(arrays)
  return ["/".join(key) for key in matches]


def initialize_backbone(backbone: keras.Model, init: str, weights_path: str = "",
                        video: bool = True) -> str:
  """Initialises `backbone` per ``model.backbone.init``; returns a one-line description.

  Args:
    backbone: a resnet3d (`video`) or resnet2d backbone.
    init: none | imagenet | reid | kinetics (nonlocal_i3d table 3).
    weights_path: local weights file; required for reid and kinetics, optional for imagenet.
    video: whether `backbone` is the 3-D network.
  """
  if init == "none":
    return "backbone initialised from scratch"
  if init == "kinetics":
    if not video:
      raise WeightsError("model.backbone.init=kinetics loads 3-D ResNet3D weights, but this "
                         "model has a 2-D backbone; use init=imagenet or init=reid.")
    loaded = load_3d_weights(backbone, weights_path)
    return f"backbone loaded from 3-D weights {weights_path} ({len(loaded)} layers)"
  if init not in ("imagenet", "reid"):
    raise WeightsError(f"model.backbone.init={init!r} is not valid; expected one of "
                       "'none', 'imagenet', 'reid', 'kinetics'.")
  if weights_path:
    weights, source = read_weights_file(weights_path), weights_path
  elif init == "imagenet":
    weights, source = imagenet_resnet50_weights(), "keras.applications ImageNet ResNet-50"
  else:
    raise WeightsError("model.backbone.init=reid reads a 2-D ResNet-50 trained on ReID data "
                       "from a local file: set model.backbone.weights_path.")
  loaded = load_2d_weights(backbone, weights, source)
  verb = "inflated" if video else "loaded"
  return f"backbone {verb} from {source} ({len(loaded)} layers)"
