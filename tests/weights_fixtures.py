"""A Keras ResNet-50 with random weights for the weight-loading tests (no download)."""

import keras
import numpy as np


def random_resnet50(seed: int) -> keras.Model:
  """keras.applications.ResNet50 (no top) with random kernels, and random convolution
  biases and BatchNorm statistics too (the library initialisers make them 0 and 1), so
  folding biases into the BN moving means is exercised."""
  keras.utils.set_random_seed(seed)
  model = keras.applications.ResNet50(weights=None, include_top=False)
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      kernel, bias = layer.get_weights()
      layer.set_weights([kernel, rng.normal(0.0, 0.1, bias.shape).astype("float32")])
    elif isinstance(layer, keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0.0, 0.1, n),
                         rng.normal(0.0, 0.1, n), rng.uniform(0.5, 1.5, n)])
  return model
