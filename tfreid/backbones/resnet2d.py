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
"""

from __future__ import annotations

import keras

from tfreid.backbones import resnet3d


def resnet2d(block_counts=(3, 4, 6, 3), base_width: int = 64, last_stride: int = 2,
             name: str = "resnet2d") -> keras.Model:
  """The 2-D ResNet as a functional Keras model.

  Input: normalised frames [N, H, W, 3]. Output: the endpoints dict {"stem", "res2", "res3",
  "res4", "res5"} of [N, h, w, c] feature maps (res5: ``resnet3d.output_channels(base_width)``
  channels). Defaults: ResNet-50 as in keras.applications.
  """
  inputs = keras.Input(shape=(None, None, 3), name="frames")
  endpoints = resnet3d.build_resnet(inputs, video=False, block_counts=block_counts,
                                    base_width=base_width, last_stride=last_stride)
  return keras.Model(inputs, endpoints, name=name)


def resnet2d_kwargs(backbone_config) -> dict:
  """Turns a :class:`tfreid.config.BackboneConfig` into :func:`resnet2d` arguments."""
  return {"block_counts": tuple(backbone_config.block_counts),
          "base_width": backbone_config.base_width,
          "last_stride": backbone_config.last_stride}
