"""ResNet3D-50 with temporally separable inflated convolutions and non-local blocks.

The track-level feature extractor of nonlocal_i3d (Liao et al., section 3.1, fig. 3): a
ResNet-50 (He et al. 2016) whose residual blocks see time, with embedded-Gaussian non-local
blocks (section 3.2) between residual blocks.

Layer table for an 8 x 256 x 128 clip at the paper's configuration (T x H x W x C;
"k_t x 1 x 1 -> 1 x 3 x 3" is the temporally separable convolution of fig. 3(d)):

| stage | residual block (stride of the first block)        | blocks   | output            |
| ----- | ------------------------------------------------- | -------- | ----------------- |
| stem  | 1x7x7 conv 64 (1,2,2); 1x3x3 max-pool (1,2,2)     |          | 8 x 64 x 32 x 64  |
| res2  | 1x1x1 64; 3x1x1 64 -> 1x3x3 64; 1x1x1 256         | 3        | 8 x 64 x 32 x 256 |
| res3  | 1x1x1 128 (1,2,2); 3x1x1 -> 1x3x3 128; 1x1x1 512  | 4 + 2 NL | 8 x 32 x 16 x 512 |
| res4  | 1x1x1 256 (1,2,2); 3x1x1 -> 1x3x3 256; 1x1x1 1024 | 6 + 3 NL | 8 x 16 x 8 x 1024 |
| res5  | 1x1x1 512 (1,s,s); 3x1x1 -> 1x3x3 512; 1x1x1 2048 | 3        | 8 x 16 x 8 x 2048 |

(s = last_stride; 1 in the nonlocal_i3d experiments, a library choice the paper does not
state (common in ReID code); 2 halves the res5 map as in the original ResNet-50.) The first block of each stage has a projection shortcut (1x1x1 conv + BN); the
stride sits on the first 1x1x1 convolution and on the shortcut, as in the Keras ResNet-50 the
weights come from.

Design choices (section 3.1 of the paper leaves them open):

* Temporal convolutions: every residual block of res2..res5 replaces its 3x3 convolution by a
  temporal k_t x 1 x 1 convolution (C -> C channels, zero "same" padding in time) followed by
  the spatial 1 x 3 x 3 one (fig. 3(d)), with no non-linearity in between, so the pair is a
  factorised k_t x 3 x 3 convolution. The 1x1x1 convolutions and the stem stay spatial.
  ``temporal_kernel=1`` removes the temporal convolutions (a per-frame 2-D ResNet).
* No temporal striding or pooling: the stem and the max-pool are 1 x k x k, so the T = 8
  frames are kept to the end and the non-local blocks attend over all of them.
* Inflation from 2-D weights (section 3.1; :mod:`tfreid.backbones.weights`): each spatial
  1 x k x k kernel takes the k x k kernel of the 2-D ResNet-50; the temporal convolution starts
  as the identity (centre tap = identity matrix, other taps 0). The paper inflates a full
  t x k x k kernel with t copies of the k x k kernel divided by t; with the separable form the
  identity temporal kernel gives the same property (a clip of T copies of one frame yields the
  2-D network's features for that frame, "boring video"), and, unlike the 1/t rule under zero
  padding, it also holds exactly at the first and last frames. Non-local blocks start as the
  identity too (zero-initialised BN scale, section 4.2), so the inflated network equals the
  2-D ResNet-50 applied to every frame.
* Non-local placement, ``nonlocal_placement``: ``nonlocal_blocks[s]`` blocks in stage s.
  ``"before"`` (default) follows the paper's text (section 4.2, "inserted to right before the
  last residual block of a stage ... to every other residual block"): the first right
  before the last residual block of the stage and the others on every other block before it
  (res3 of 4 blocks: before blocks 4 and 2; res4 of 6: before 6, 4 and 2; counted from 1).
  ``"after"`` follows the code Wang et al. released with the non-local paper (cited as [40];
  video-nonlocal-net, ``res_stage_nonlocal``: a block after every residual block whose
  0-based index i has i mod 2 = 1): one residual block later, after blocks 4 and 2 of res3 and
  6, 4 and 2 of res4, so the last one closes the stage. Layer names say which
  (``conv3_nonlocal_before_block4`` / ``conv3_nonlocal_after_block4``); the default's names
  are unchanged, so its checkpoints restore.
* Convolutions have no bias (each is followed by BatchNorm; loaded 2-D biases are folded into
  the BN moving mean). BatchNorm: epsilon 1.001e-5 as in the Keras ResNet-50, momentum 0.9
  (PyTorch's 0.1, the paper's framework).

Implementation: tensors stay [B, T, H, W, C]. A 1 x k x k convolution is a Conv2D over the
frames folded into the batch, and a k_t x 1 x 1 convolution a (k_t, 1) Conv2D over
[B, T, H*W, C]; both are the same operation as Conv3D but compile to far faster code on CPU
under XLA, and the spatial kernels keep the shapes of the 2-D network's (so inflation needs
no reshaping). The 2-D ResNet-50 of :mod:`tfreid.backbones.resnet2d` is the same builder with
``video=False``.

Stages and input channels: ``first_stage``/``last_stage`` (names in ``STAGES``: stem, res2,
res3, res4, res5) build a part of the network, from the input of its first stage (frames of
any ``input_channels``, or the previous stage's endpoint) to the endpoints of the stages in
range, with the layer names of the full network. Two-stream models (a3d) run RGB and 2-channel
optical-flow frames through their own stem and res2 and a shared res3..res5 trunk; see
:func:`build_resnet`.
"""

from __future__ import annotations

import keras
from keras import ops

from tfreid.layers.non_local import NonLocalBlock

# Stage table (He et al. 2016, table 1, 50-layer column).
#   endpoint, layer-name prefix, width (x base_width), spatial stride of the first block,
#   ResNet-50 residual blocks, paper's non-local blocks (nonlocal_i3d section 4.2).
RESNET3D_50_SPECS = (
    ("res2", "conv2", 1, 1, 3, 0),
    ("res3", "conv3", 2, 2, 4, 2),
    ("res4", "conv4", 4, 2, 6, 3),
    ("res5", "conv5", 8, None, 3, 0),  # stride None: last_stride
)
# Where non-local blocks go relative to the residual blocks nonlocal_positions picks.
NONLOCAL_PLACEMENTS = ("before", "after")
# Stage names, in order: the endpoints a backbone returns and the points it can be cut at.
STAGES = ("stem",) + tuple(spec[0] for spec in RESNET3D_50_SPECS)
# Bottleneck expansion: the block output has 4 x its width channels.
EXPANSION = 4
BN_EPSILON = 1.001e-5
BN_MOMENTUM = 0.9


# ------------------------------------------------------------------------------ layers


@keras.saving.register_keras_serializable(package="tfreid")
class TemporalIdentity(keras.initializers.Initializer):
  """Initialises a (k_t, 1, C, C) temporal kernel to the identity: centre tap = I, others 0.

  A temporal convolution with this kernel returns its input, so a network inflated from 2-D
  weights starts equal to the 2-D network applied to every frame.
  """

  def __call__(self, shape, dtype=None):
    if len(shape) != 4 or shape[1] != 1 or shape[2] != shape[3] or shape[0] % 2 == 0:
      raise ValueError("TemporalIdentity expects a kernel of shape (k_t, 1, C, C) with odd "
                       f"k_t, got {shape}.")
    eye = ops.eye(shape[2], dtype=dtype or "float32")[None, None]
    zeros = ops.zeros((shape[0] // 2, 1, shape[2], shape[3]), dtype=dtype or "float32")
    return ops.concatenate([zeros, eye, zeros], axis=0)

  def get_config(self):
    return {}


def per_frame(fn, video):
  """`fn` applied to every frame of video [B, T, H, W, C] (time folded into the batch).

  `fn` maps frames [N, H, W, C] to maps [N, h, w, c]; it runs once on [B*T, H, W, C] and its
  output is unfolded to [B, T, h, w, c]. This is the frame-wise wrapper of the 2-D layers
  here and of the per-frame 2-D ResNet (temporal_pooling), in place of
  ``keras.layers.TimeDistributed``, because it measured faster where it matters and keeps
  BatchNorm's statistics over all frames of the batch. ``benchmarks/time_distributed.py``
  (2-D ResNet 3-4-6-3 at base_width 16, 8 clips of 8 x 64 x 32, forward + backward in
  training mode, both side by side in one run; 2-core CPU, two runs):

  * without XLA: fold 164-184 ms per step; TimeDistributed 2.03x and 2.21x that on clips of
    static T (Keras 3.15 calls the network once per time step), 1.07x and 1.08x with T
    unknown (it then maps over time with ``vectorized_map``). Evaluation and export run
    without XLA.
  * with XLA (``runtime.jit_compile``): TimeDistributed 0.93x and 0.95x of fold (450-585 ms),
    i.e. 5-7 % faster, at static T only (with T unknown it does not compile); on this CPU
    both are 2.4-3.5x slower than fold without XLA.

  Besides speed, TimeDistributed changes training: BatchNorm normalises each time step's B
  frames separately (and updates its moving statistics T times a step) where the fold
  normalises all B*T frames together, as a 2-D network given the frames as one batch does;
  the training-mode outputs differed by 74 % (relative) in the benchmark, the inference ones
  not at all.
  """
  shape = ops.shape(video)
  out = fn(ops.reshape(video, (-1, shape[2], shape[3], shape[4])))
  out_shape = ops.shape(out)
  return ops.reshape(out, (shape[0], shape[1], out_shape[1], out_shape[2], out_shape[3]))


@keras.saving.register_keras_serializable(package="tfreid")
class FrameConv2D(keras.layers.Conv2D):
  """A 1 x k x k convolution of video [B, T, H, W, C]: Conv2D on every frame.

  Takes the arguments of ``keras.layers.Conv2D``; its kernel has the Conv2D shape
  (k, k, C_in, C_out), i.e. the 1 x k x k Conv3D kernel without its leading 1.
  """

  def build(self, input_shape):
    super().build((None,) + tuple(input_shape[2:]))

  def call(self, inputs):
    return per_frame(super().call, inputs)

  def compute_output_shape(self, input_shape):
    if len(input_shape) == 4:  # called by Conv2D.build with the frame shape
      return super().compute_output_shape(input_shape)
    frame = super().compute_output_shape((None,) + tuple(input_shape[2:]))
    return (input_shape[0], input_shape[1]) + tuple(frame[1:])


@keras.saving.register_keras_serializable(package="tfreid")
class FrameMaxPooling2D(keras.layers.MaxPooling2D):
  """A 1 x k x k max-pooling of video [B, T, H, W, C]: MaxPooling2D on every frame."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.input_spec = keras.layers.InputSpec(ndim=5)

  def call(self, inputs):
    return per_frame(super().call, inputs)

  def compute_output_shape(self, input_shape):
    frame = super().compute_output_shape((None,) + tuple(input_shape[2:]))
    return (input_shape[0], input_shape[1]) + tuple(frame[1:])


@keras.saving.register_keras_serializable(package="tfreid")
class TemporalConv(keras.layers.Conv2D):
  """A k_t x 1 x 1 convolution of video [B, T, H, W, C] (nonlocal_i3d fig. 3(d)).

  A (k_t, 1) Conv2D over [B, T, H*W, C]: every spatial position is filtered along time, with
  zero "same" padding, no bias, and by default the identity initialisation of
  :class:`TemporalIdentity` (output = input until trained).

  Args:
    filters: output channels (the identity initialisation needs filters = input channels).
    kernel_size: k_t (an int, or the (k_t, 1) pair of a saved config).
    Other arguments are those of ``keras.layers.Conv2D``.
  """

  def __init__(self, filters, kernel_size=3, kernel_initializer=None, **kwargs):
    k_t = kernel_size if isinstance(kernel_size, int) else tuple(kernel_size)[0]
    kwargs.setdefault("padding", "same")
    kwargs.setdefault("use_bias", False)
    super().__init__(filters, (k_t, 1),
                     kernel_initializer=kernel_initializer or TemporalIdentity(), **kwargs)

  def build(self, input_shape):
    super().build((None, None, None, input_shape[-1]))

  def call(self, inputs):
    shape = ops.shape(inputs)
    out = super().call(ops.reshape(inputs, (shape[0], shape[1], -1, shape[4])))
    return ops.reshape(out, (shape[0], shape[1], shape[2], shape[3], ops.shape(out)[-1]))

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.filters,)


# ----------------------------------------------------------------------------- builder


def _batch_norm(name):
  return keras.layers.BatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                         name=name)


def _conv(video, filters, kernel_size, strides, name, padding="valid"):
  cls = FrameConv2D if video else keras.layers.Conv2D
  return cls(filters, kernel_size, strides=strides, padding=padding, use_bias=False,
             kernel_initializer="he_normal", name=name)


def _zero_pad(video, pad, name):
  if video:
    return keras.layers.ZeroPadding3D(((0, 0), (pad, pad), (pad, pad)), name=name)
  return keras.layers.ZeroPadding2D(pad, name=name)


def _bottleneck_block(x, *, video, width, stride, projection, prefix, temporal_kernel):
  """One bottleneck residual block (fig. 3(c)), layer names as keras.applications.ResNet50."""
  if projection:
    shortcut = _conv(video, EXPANSION * width, 1, stride, f"{prefix}_0_conv")(x)
    shortcut = _batch_norm(f"{prefix}_0_bn")(shortcut)
  else:
    shortcut = x
  y = _conv(video, width, 1, stride, f"{prefix}_1_conv")(x)
  y = _batch_norm(f"{prefix}_1_bn")(y)
  y = keras.layers.Activation("relu", name=f"{prefix}_1_relu")(y)
  if video and temporal_kernel > 1:
    y = TemporalConv(width, temporal_kernel, name=f"{prefix}_2_temporal_conv")(y)
  y = _conv(video, width, 3, 1, f"{prefix}_2_conv", padding="same")(y)
  y = _batch_norm(f"{prefix}_2_bn")(y)
  y = keras.layers.Activation("relu", name=f"{prefix}_2_relu")(y)
  y = _conv(video, EXPANSION * width, 1, 1, f"{prefix}_3_conv")(y)
  y = _batch_norm(f"{prefix}_3_bn")(y)
  y = keras.layers.Add(name=f"{prefix}_add")([shortcut, y])
  return keras.layers.Activation("relu", name=f"{prefix}_out")(y)


def nonlocal_positions(num_blocks: int, num_nonlocal: int) -> list[int]:
  """0-based indices of the residual blocks a stage's non-local blocks are inserted before
  (placement "before") or after (placement "after").

  Section 4.2: right before the last residual block, then on every other block going back.
  """
  if num_nonlocal > (num_blocks + 1) // 2 or num_nonlocal < 0:
    raise ValueError(f"a stage of {num_blocks} residual blocks takes 0..{(num_blocks + 1) // 2} "
                     f"non-local blocks (one on every other block), got {num_nonlocal}.")
  return sorted(num_blocks - 1 - 2 * k for k in range(num_nonlocal))


def _check_stage(stage, arg="stage"):
  if stage not in STAGES:
    raise ValueError(f"{arg}={stage!r} is not a stage of the ResNet; valid stage names, in "
                     f"order: {', '.join(STAGES)}.")


def stage_range(first_stage: str = "stem", last_stage: str = "res5") -> tuple[str, ...]:
  """The stages from `first_stage` to `last_stage`, both included, in network order.

  Raises ValueError, listing the valid names, for an unknown name or an empty range.
  """
  _check_stage(first_stage, "first_stage")
  _check_stage(last_stage, "last_stage")
  first, last = STAGES.index(first_stage), STAGES.index(last_stage)
  if first > last:
    raise ValueError(f"first_stage={first_stage!r} comes after last_stage={last_stage!r}: the "
                     f"range is empty. Stages run in the order {', '.join(STAGES)}; pick "
                     "first_stage at or before last_stage.")
  return STAGES[first:last + 1]


def stage_output_channels(stage: str, base_width: int) -> int:
  """Channels of the `stage` endpoint (stem: base_width; res2..res5: 4, 8, 16, 32 x it)."""
  _check_stage(stage)
  if stage == "stem":
    return base_width
  multiplier = {spec[0]: spec[2] for spec in RESNET3D_50_SPECS}[stage]
  return EXPANSION * multiplier * base_width


def stage_input_channels(stage: str, base_width: int, input_channels: int = 3) -> int:
  """Channels of what `stage` takes: the frames' for the stem, else the previous endpoint's."""
  _check_stage(stage)
  if stage == "stem":
    return input_channels
  return stage_output_channels(STAGES[STAGES.index(stage) - 1], base_width)


def stage_input_name(stage: str, video: bool) -> str:
  """Name of a backbone's input: ``clips``/``frames`` at the stem, else the endpoint it takes."""
  _check_stage(stage)
  if stage == "stem":
    return "clips" if video else "frames"
  return STAGES[STAGES.index(stage) - 1]


def _check_input_channels(first_stage, base_width, input_channels):
  if input_channels < 1:
    raise ValueError(f"input_channels must be >= 1, got {input_channels}.")
  if first_stage != "stem" and input_channels != 3:
    raise ValueError(
        f"input_channels={input_channels} sets the channels of the frames the stem takes, but "
        f"this backbone starts at {first_stage}, which takes the "
        f"{stage_input_channels(first_stage, base_width)}-channel "
        f"{stage_input_name(first_stage, False)} map; leave input_channels at 3 or start at "
        "first_stage='stem'.")


def build_resnet(inputs, *, video: bool, block_counts=(3, 4, 6, 3), base_width: int = 64,
                 last_stride: int = 1, temporal_kernel: int = 3,
                 nonlocal_blocks=(0, 0, 0, 0), nonlocal_ratio: float = 0.5,
                 nonlocal_subsample: bool = True, input_channels: int | None = None,
                 first_stage: str = "stem", last_stage: str = "res5",
                 nonlocal_placement: str = "before") -> dict:
  """Applies the ResNet layers of stages `first_stage`..`last_stage` to a symbolic input.

  A cut network has the layers (and layer names) the full network has in those stages, so
  pieces cut at the same stage compose into the full network, and weights load into them by
  name (the stem of a 2-stream network taking flow, then a shared res3..res5 trunk, say).

  Args:
    inputs: keras.Input. At the stem: frames [B, T, H, W, C] if `video` else [N, H, W, C]
      (normalised floats, any C). At a later stage: the previous stage's endpoint, with its
      channels (:func:`stage_input_channels`; 256 for res3 at base_width 64).
    video: 3-D network (temporal convolutions, non-local blocks) or the 2-D one.
    block_counts: residual blocks of res2..res5.
    base_width: bottleneck width of res2 (doubles per stage).
    last_stride: spatial stride of res5 (1 or 2).
    temporal_kernel: k_t of the separable temporal convolutions (video only; 1 = none).
    nonlocal_blocks: non-local blocks per stage res2..res5 (video only); entries of stages
      outside the range are not built.
    nonlocal_ratio, nonlocal_subsample: :class:`NonLocalBlock` arguments.
    input_channels: channels of the frames; when set, `inputs` must have them (the range must
      then start at the stem, unless it is 3). None: whatever `inputs` has.
    first_stage, last_stage: the range of stages built, both included, among
      ``STAGES`` = stem, res2, res3, res4, res5.
    nonlocal_placement: "before" (the paper's text) or "after" (Wang et al.'s released
      code) the residual blocks of :func:`nonlocal_positions` (module docstring).

  Returns:
    {stage: symbolic output} for the stages of the range (by default "stem", "res2", "res3",
    "res4", "res5").
  """
  stages = stage_range(first_stage, last_stage)
  if len(block_counts) != 4 or len(nonlocal_blocks) != 4:
    raise ValueError("block_counts and nonlocal_blocks list the 4 stages res2..res5, got "
                     f"{list(block_counts)} and {list(nonlocal_blocks)}.")
  if not video and any(nonlocal_blocks):
    raise ValueError("non-local blocks need the video (3-D) network; got nonlocal_blocks="
                     f"{list(nonlocal_blocks)} with video=False.")
  if last_stride not in (1, 2):
    raise ValueError(f"last_stride must be 1 or 2, got {last_stride}.")
  if nonlocal_placement not in NONLOCAL_PLACEMENTS:
    raise ValueError(f"nonlocal_placement must be one of {NONLOCAL_PLACEMENTS}, got "
                     f"{nonlocal_placement!r}.")
  if input_channels is not None:
    _check_input_channels(first_stage, base_width, input_channels)
  rank, got = (5 if video else 4), tuple(inputs.shape)
  expected = stage_input_channels(first_stage, base_width,
                                  input_channels if input_channels is not None else got[-1])
  if len(got) != rank or got[-1] != expected:
    what = ("frames" if first_stage == "stem"
            else f"the {stage_input_name(first_stage, video)} endpoint")
    layout = "[B, T, H, W, C]" if video else "[N, H, W, C]"
    raise ValueError(f"a backbone starting at {first_stage} takes {what} {layout} with "
                     f"C={expected} (base_width={base_width}), got inputs of shape {got}.")
  endpoints = {}
  x = inputs
  if "stem" in stages:
    x = _zero_pad(video, 3, "conv1_pad")(x)
    x = _conv(video, base_width, 7, 2, "conv1_conv")(x)
    x = _batch_norm("conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = _zero_pad(video, 1, "pool1_pad")(x)
    pool = FrameMaxPooling2D if video else keras.layers.MaxPooling2D
    x = pool(3, strides=2, name="pool1_pool")(x)
    endpoints["stem"] = x
  for (endpoint, prefix, multiplier, stride, _, _), blocks, num_nl in zip(
      RESNET3D_50_SPECS, block_counts, nonlocal_blocks):
    if endpoint not in stages:
      continue
    stride = last_stride if stride is None else stride
    positions = nonlocal_positions(blocks, num_nl) if video else []
    for index in range(blocks):
      if index in positions and nonlocal_placement == "before":
        x = NonLocalBlock(nonlocal_ratio, nonlocal_subsample,
                          name=f"{prefix}_nonlocal_before_block{index + 1}")(x)
      x = _bottleneck_block(x, video=video, width=multiplier * base_width,
                            stride=stride if index == 0 else 1, projection=index == 0,
                            prefix=f"{prefix}_block{index + 1}",
                            temporal_kernel=temporal_kernel)
      if index in positions and nonlocal_placement == "after":
        x = NonLocalBlock(nonlocal_ratio, nonlocal_subsample,
                          name=f"{prefix}_nonlocal_after_block{index + 1}")(x)
    endpoints[endpoint] = x
  return endpoints


def backbone_input(video: bool, first_stage: str = "stem", base_width: int = 64,
                   input_channels: int = 3):
  """The keras.Input of a backbone starting at `first_stage` (see :func:`build_resnet`)."""
  _check_stage(first_stage, "first_stage")
  _check_input_channels(first_stage, base_width, input_channels)
  channels = stage_input_channels(first_stage, base_width, input_channels)
  spatial = (None, None, None) if video else (None, None)
  return keras.Input(shape=spatial + (channels,), name=stage_input_name(first_stage, video))


def resnet3d(block_counts=(3, 4, 6, 3), base_width: int = 64, last_stride: int = 1,
             temporal_kernel: int = 3, nonlocal_blocks=(0, 2, 3, 0),
             nonlocal_ratio: float = 0.5, nonlocal_subsample: bool = True,
             name: str = "resnet3d", input_channels: int = 3, first_stage: str = "stem",
             last_stage: str = "res5", nonlocal_placement: str = "before") -> keras.Model:
  """The ResNet3D backbone, or the stages `first_stage`..`last_stage` of it, as a Keras model.

  Input: normalised clips [B, T, H, W, input_channels] (any T, H, W), or, when the range
  starts after the stem, the previous stage's endpoint [B, T, h, w, c] (e.g. c = 256 for
  res3 at base_width 64; :func:`stage_input_channels`). Output: the endpoints dict
  {"stem", "res2", "res3", "res4", "res5"} (the stages of the range) of [B, T, h, w, c]
  feature maps; res5 has ``output_channels(base_width)`` channels (2048 for base_width 64).
  Defaults are the paper's configuration (section 4.2): the whole network on RGB clips. Layer
  names do not depend on the range, so a cut network is a part of the full one (see
  :func:`build_resnet`). See the module docstring for the architecture.

  Example (a two-stream stem: flow through its own stem and res2, summed with the RGB one,
  then a shared trunk)::

    flow_stem = resnet3d(input_channels=2, last_stage="res2", name="flow")
    trunk = resnet3d(first_stage="res3")  # takes [B, T, h, w, 256]
  """
  if temporal_kernel < 1 or temporal_kernel % 2 == 0:
    raise ValueError(f"temporal_kernel must be odd and >= 1, got {temporal_kernel}.")
  stage_range(first_stage, last_stage)
  inputs = backbone_input(True, first_stage, base_width, input_channels)
  endpoints = build_resnet(inputs, video=True, block_counts=block_counts,
                           base_width=base_width, last_stride=last_stride,
                           temporal_kernel=temporal_kernel, nonlocal_blocks=nonlocal_blocks,
                           nonlocal_ratio=nonlocal_ratio, nonlocal_subsample=nonlocal_subsample,
                           input_channels=input_channels, first_stage=first_stage,
                           last_stage=last_stage, nonlocal_placement=nonlocal_placement)
  return keras.Model(inputs, endpoints, name=name)


def output_channels(base_width: int) -> int:
  """Channels of the res5 endpoint."""
  return 8 * EXPANSION * base_width


def resnet3d_kwargs(backbone_config) -> dict:
  """Turns a :class:`tfreid.config.BackboneConfig` into :func:`resnet3d` arguments."""
  nl = backbone_config.nonlocal_blocks
  return {"block_counts": tuple(backbone_config.block_counts),
          "base_width": backbone_config.base_width,
          "last_stride": backbone_config.last_stride,
          "temporal_kernel": backbone_config.temporal_kernel,
          "nonlocal_blocks": tuple(nl.blocks_per_stage),
          "nonlocal_ratio": nl.bottleneck_ratio,
          "nonlocal_subsample": nl.subsample,
          "nonlocal_placement": nl.placement}
