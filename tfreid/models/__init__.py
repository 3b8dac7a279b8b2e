"""Models: one module per method, each a Keras subclassed model.

Contract (STYLE.md house conventions):
- A module `tfreid/models/NAME.py` exposes `build(config: ExperimentConfig, num_classes: int)
  -> keras.Model`. `build_model` looks it up by `config.model.name`; no registration step.
- `model(inputs, training=...)` takes a dict with `"clips"`: uint8 [B, T, H, W, 3] (plus
  `"flow"` float32 [B, T, H, W, 2] / `"keypoints"` float32 [B, T, 14, 3] when the model's
  config asks for them). Float conversion and normalisation happen inside the model.
- It always returns a dict with `"embedding"` float32 [B, D] (the retrieval feature) and
  `"logits"` float32 [B, num_classes], plus what its losses or visualisations need.
- A model with a learned metric also has `pairwise_distance(query_outputs, gallery_outputs)`.
"""

import importlib


def build_model(config, num_classes: int):
  """Builds the model named by `config.model.name` for `num_classes` training identities."""
  module = importlib.import_module(f"tfreid.models.{config.model.name}")
  return module.build(config, num_classes)
