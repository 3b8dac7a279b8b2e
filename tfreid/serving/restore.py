"""Restore a trained run for export: the library's one restore path
(`tfreid.training.restore`), with its errors reported as export errors."""

from tfreid.serving.export_module import ExportError
from tfreid.training import restore as _restore
from tfreid.training.restore import (GLOBAL_STEP_KEY, RestoredRun,  # noqa: F401
                                     build_for_restore, checkpoint_variable_shapes)


def num_classes_from_checkpoint(config, path: str) -> int:
  """`tfreid.training.restore.num_classes_from_checkpoint`, errors as ExportError."""
  try:
    return _restore.num_classes_from_checkpoint(config, path)
  except _restore.RestoreError as e:
    raise ExportError(str(e)) from e


def load_run(model_dir: str, checkpoint: str = "latest") -> RestoredRun:
  """`tfreid.training.restore.load_run`, errors as ExportError."""
  try:
    return _restore.load_run(model_dir, checkpoint)
  except _restore.RestoreError as e:
    raise ExportError(str(e)) from e
