"""Keras 3 layers shared by the models, one module per kind of layer.

- ``non_local``: :class:`NonLocalBlock`, the embedded-Gaussian space-time non-local block
  (nonlocal_i3d eqs. 3-6).
- ``preprocessing``: :class:`ClipNormalization`, uint8 clips to normalised floats inside the
  model.
"""

from tfreid.layers.non_local import NonLocalBlock
from tfreid.layers.preprocessing import ClipNormalization
