"""Write a training run as a versioned SavedModel for TF Serving, with its model card.

Layout (TF Serving's model base path holds integer version directories)::

    EXPORT_DIR/
      1/
        saved_model.pb  variables/
        assets/config.yaml        the run's final config (model, input size, T ...)
        assets/model_card.json    experiment, dataset, protocol, metrics, checkpoint,
                                  input spec, signatures
      2/ ...

The version directory is written under a temporary name in EXPORT_DIR and renamed when
complete, so a TF Serving instance polling EXPORT_DIR never loads a half-written version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Optional

import tensorflow as tf

import tfreid
from tfreid import config as cfg
from tfreid.data import schema
from tfreid.data import streams as streams_lib
from tfreid.models import contract
from tfreid.serving import restore
from tfreid.serving.export_module import ExportError, ReidExportModule, describe_spec

CONFIG_ASSET = "config.yaml"
MODEL_CARD_ASSET = "model_card.json"
METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP")


def existing_versions(export_dir: str) -> list[int]:
  """Integer version directories in `export_dir`, sorted."""
  if not os.path.isdir(export_dir):
    return []
  return sorted(int(name) for name in os.listdir(export_dir)
                if re.fullmatch(r"\d+", name) and os.path.isdir(os.path.join(export_dir, name)))


def resolve_version(export_dir: str, version: int) -> int:
  """`version`, or the next free integer (starting at 1) when it is 0."""
  if version < 0:
    raise ExportError(f"the export version must be >= 0 (0: the next free one), got {version}.")
  versions = existing_versions(export_dir)
  if version == 0:
    return (versions[-1] + 1) if versions else 1
  if version in versions:
    raise ExportError(f"{os.path.join(export_dir, str(version))} already exists; TF Serving "
                      "treats a version as immutable. Choose another --version, or 0 for the "
                      f"next free one ({(versions[-1] + 1)}).")
  return version


def export_module_for(config: cfg.ExperimentConfig, model) -> ReidExportModule:
  """The `ReidExportModule` of a model built from `config`: the streams it declares, the
  evaluation's metric (`tfreid.models.contract.resolve_metric`) and tracklet merge."""
  d = config.data
  return ReidExportModule(model, height=d.height, width=d.width, seq_len=d.test_clip_len,
                          test_sampler=d.test_sampler, test_stride=d.test_sample_stride,
                          tracklet_batch_size=config.export.tracklet_batch_size,
                          streams=contract.input_streams(config),
                          metric=contract.resolve_metric(config, model))


# Names of the free axes of the signature outputs, for the model card.
_OUTPUT_AXES = {"serving_default": ("B",), "embed_tracklet": (), "distance": ("Q", "G")}


def _spec_json(spec: tf.TensorSpec, axis_names=None) -> dict:
  return {"dtype": spec.dtype.name,
          "shape": [-1 if d is None else d for d in spec.shape.as_list()],
          "spec": describe_spec(spec, axis_names)}


def _read_json(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def model_card(run: restore.RestoredRun, module: ReidExportModule, model_dir: str) -> dict:
  """The model_card.json record (module docstring)."""
  config = run.config
  try:
    dataset = schema.read_manifest(config.data.data_dir).get("dataset")
  except (schema.DatasetError, OSError, ValueError):
    dataset = None
  metrics = _read_json(os.path.join(model_dir, "eval", "metrics.json"))
  if metrics is not None:
    metrics = {k: metrics[k] for k in METRIC_KEYS + ("protocol", "checkpoint_step",
                                                     "num_valid_queries", "split")
               if k in metrics}
    metrics["of_exported_checkpoint"] = metrics.get("checkpoint_step") == run.step
  inputs, outputs = module.input_specs(), module.output_specs()
  signatures = {
      name: {"inputs": {k: _spec_json(s) for k, s in inputs[name].items()},
             "outputs": {k: _spec_json(s, _OUTPUT_AXES[name])
                         for k, s in outputs[name].items()}}
      for name in inputs}
  return {
      "tfreid_version": tfreid.__version__,
      "tensorflow_version": tf.__version__,
      "experiment": config.experiment,
      "method": config.model.name,
      "dataset": {"name": dataset, "data_dir": config.data.data_dir,
                  "split": config.data.split, "num_train_identities": run.num_classes},
      "protocol": (metrics or {}).get("protocol", config.eval.protocol),
      "distance": module.metric,
      "streams": {name: streams_lib.STREAMS[name].description for name in module.streams},
      "metrics": metrics,
      "checkpoint": {"path": os.path.abspath(run.checkpoint_path), "step": run.step},
      "input": {
          "pixels": "RGB uint8 0..255, not normalised (the model normalises)",
          "height": module.height, "width": module.width, "seq_len": module.seq_len,
          "resize": "frames of another size are resized inside to height x width: nearest "
                    "neighbour, pixel centres at half-integers (the test pipeline's rule)",
          "test_sampler": module.test_sampler,
          "test_sample_stride": module.test_stride,
          "tracklet_batch_size": module.tracklet_batch_size,
      },
      "signatures": signatures,
  }


def export_run(model_dir: str, export_dir: str, checkpoint: str = "latest",
               version: Optional[int] = None) -> str:
  """Restores the run in `model_dir` and writes `export_dir/<version>/`; returns that path.

  Args:
    model_dir: training directory (config.yaml, checkpoints, eval/metrics.json if any).
    export_dir: TF Serving model base path.
    checkpoint: "latest", "best", a step or a checkpoint path.
    version: version directory; None: the config's export.version; 0: the next free one.

  Raises:
    FileNotFoundError: no config.yaml or no such checkpoint.
    ExportError: the version exists, or the model cannot be exported.
  """
  run = restore.load_run(model_dir, checkpoint)
  module = export_module_for(run.config, run.model)
  version = resolve_version(export_dir, run.config.export.version if version is None
                            else version)
  os.makedirs(export_dir, exist_ok=True)
  final = os.path.join(export_dir, str(version))
  staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
  assets = tempfile.mkdtemp(prefix=".assets-", dir=export_dir)
  try:
    cfg.save_config(run.config, os.path.join(assets, CONFIG_ASSET))
    with open(os.path.join(assets, MODEL_CARD_ASSET), "w") as f:
      json.dump(model_card(run, module, model_dir), f, indent=1)
    # Asset objects are copied into <version>/assets/ and tracked by the SavedModel.
    module.config_file = tf.saved_model.Asset(os.path.join(assets, CONFIG_ASSET))
    module.model_card = tf.saved_model.Asset(os.path.join(assets, MODEL_CARD_ASSET))
    tf.saved_model.save(module, staging, signatures=module.get_signatures())
    if os.path.exists(final):
      raise ExportError(f"{final} appeared while exporting; not overwriting it.")
    os.replace(staging, final)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(assets, ignore_errors=True)
  return final
