"""2-D ResNet-50 applied to frames: the backbone of the temporal-pooling baseline.

nonlocal_i3d table 2 "Baseline" (fig. 1(A)): a 2-D ResNet-50 (He et al. 2016) extracts a
feature map per frame; the model averages them over time. The network is the builder of
:mod:`tfreid.backbones.resnet3d` with ``video=False``: the same stage table
(``RESNET3D_50_SPECS``), the same layer names as ``keras.applications.ResNet50`` (so Keras
ResNet-50 weight files load by name, see :mod:`tfreid.backbones.weights`), no temporal
convolutions and no non-local blocks.

| stage | layers                                   | blocks | output for a 256 x 128 frame |
| ----- | ---------------------------------------- | ------ | ---------------------------- |
| stem  | 7x7 conv 64 stride 2; 3x3 max-pool s 2   |        | 64 x 32 x 64                 |
| res2  | 1x1 64; 3x3 64; 1x1 256                  | 3      | 64 x 32 x 256                |
| res3  | 1x1 128 (first: stride 2); 3x3; 1x1 512  | 4      | 32 x 16 x 512                |
| res4  | 1x1 256 (first: stride 2); 3x3; 1x1 1024 | 6      | 16 x 8 x 1024                |
| res5  | 1x1 512 (first: stride s); 3x3; 1x1 2048 | 3      | 8 x 4 x 2048 (s = 2)         |

With ``last_stride=2`` and the default widths it is exactly ``keras.applications.ResNet50``
without its top (convolution biases folded into the BatchNorm moving means).

``input_channels`` (frames other than RGB, e.g. 2-channel optical flow) and a stage range
(``first_stage``, ``last_stage``) build a part of it under the same layer names, for networks
that fuse two streams after a stage (a3d: RGB and flow summed after res2).
"""

from __future__ import annotations

import keras

from tfreid.backbones import resnet3d


def resnet2d(block_counts=(3, 4, 6, 3), base_width: int = 64, last_stride: int = 2,
             name: str = "resnet2d", input_channels: int = 3, first_stage: str = "stem",
             last_stage: str = "res5") -> keras.Model:
  """The 2-D ResNet, or its stages `first_stage`..`last_stage`, as a functional Keras model.

  Input: normalised frames [N, H, W, input_channels], or, when the range starts after the
  stem, the previous stage's endpoint [N, h, w, c] (``resnet3d.stage_input_channels``: 256 for
  res3 at base_width 64). Output: the endpoints dict {"stem", "res2", "res3", "res4", "res5"}
  (the stages of the range) of [N, h, w, c] feature maps (res5:
  ``resnet3d.output_channels(base_width)`` channels). Defaults: ResNet-50 as in
  keras.applications, whole, on RGB frames. Layer names do not depend on the range: a cut
  network is the part of the full one in those stages, and 2-D weights load into it by name
  (:func:`tfreid.backbones.weights.load_2d_weights`).

  Example (a3d's two streams: flow frames through their own stem and res2, summed with the
  RGB ones, then one shared res3..res5 trunk)::

    rgb = resnet2d(last_stage="res2", name="rgb")
    flow = resnet2d(input_channels=2, last_stage="res2", name="flow")
    trunk = resnet2d(first_stage="res3", name="trunk")  # takes [N, h, w, 256]
    maps = trunk(rgb(frames)["res2"] + flow(flow_frames)["res2"])["res5"]
  """
  inputs = resnet3d.backbone_input(False, first_stage, base_width, input_channels)
  endpoints = resnet3d.build_resnet(inputs, video=False, block_counts=block_counts,
                                    base_width=base_width, last_stride=last_stride,
                                    input_channels=input_channels, first_stage=first_stage,
                                    last_stage=last_stage)
  return keras.Model(inputs, endpoints, name=name)


def resnet2d_kwargs(backbone_config) -> dict:
  """Turns a :class:`tfreid.config.BackboneConfig` into :func:`resnet2d` arguments."""
  return {"block_counts": tuple(backbone_config.block_counts),
          "base_width": backbone_config.base_width,
          "last_stride": backbone_config.last_stride}
