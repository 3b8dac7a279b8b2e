"""Backbones: functional Keras models that return a dict of endpoints.

- ``resnet3d``: ResNet3D-50 with temporally separable inflated convolutions and non-local
  blocks (nonlocal_i3d), on clips [B, T, H, W, 3].
- ``resnet2d``: the 2-D ResNet-50 on frames [N, H, W, 3] (same builder, ``video=False``).
  Both take any input channel count and can be cut at named stages (stem, res2 .. res5).
- ``weights``: initialisation from 2-D ResNet-50 weights (inflated for ResNet3D; a non-RGB
  stem by the cross-modality rule) or from 3-D weights files (``model.backbone.init``).
"""
