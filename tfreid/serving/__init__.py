"""Serving: SavedModel export of trained models, for TF Serving and local use.

- `export_module.ReidExportModule`: the `tf.Module` with the signatures ``serving_default``
  (uint8 clips -> embeddings), ``embed_tracklet`` (all frames of one tracklet -> its
  evaluation feature) and ``distance`` (models with a learned metric).
- `exporter.export_run`: training directory -> ``EXPORT_DIR/<version>/`` with
  ``assets/config.yaml`` and ``assets/model_card.json`` (``python -m tfreid.export``).
- `restore.load_run`: config.yaml + checkpoint -> restored model.
- `validate_inputs`: the signatures' input checks in Python, for local callers.
"""

from tfreid.serving.export_module import (DISTANCE, EMBED_TRACKLET, SERVING_DEFAULT,
                                          ExportError, ReidExportModule, describe_spec,
                                          resize_frames, validate_inputs)
from tfreid.serving.exporter import export_module_for, export_run, model_card, resolve_version
from tfreid.serving.restore import (RestoredRun, checkpoint_variable_shapes, load_run,
                                    num_classes_from_checkpoint)

__all__ = [
    "DISTANCE", "EMBED_TRACKLET", "SERVING_DEFAULT", "ExportError", "ReidExportModule",
    "RestoredRun", "checkpoint_variable_shapes", "describe_spec", "export_module_for",
    "export_run", "load_run", "model_card", "num_classes_from_checkpoint", "resize_frames",
    "resolve_version", "validate_inputs",
]
