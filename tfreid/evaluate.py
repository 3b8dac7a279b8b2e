"""Evaluate a trained model, on its own dataset or on another one (cross-dataset testing).

    python -m tfreid.evaluate --model_dir=DIR [--checkpoint=latest|best|STEP|PATH]
        [--protocol=torchreid|mars_matlab] [--rerank] [--data_dir=DIR] [--split=N|all]
        [--output_dir=DIR] [--override=key.path=value ...]

Restores the checkpoint, extracts dense test features (every clip of every tracklet,
averaged per tracklet), evaluates, and writes metrics.json (rank1, rank5, rank10, rank20,
mAP as fractions, protocol, checkpoint_step, plus trained_on / tested_on), metrics.md (in %,
one decimal, as printed), cmc.png and rank-list PNGs (rank_lists/: a query's frames beside
its top-10 gallery tracklets, green border = true match, red = wrong), and the same to
TensorBoard (event file in the report directory).

The model is rebuilt from DIR/config.yaml with `model.backbone.init=none` (the checkpoint
overwrites every weight, so no pretrained weight file is read) and every model variable
must be restored from the checkpoint. The classifier has as many classes as the run had
training identities: read from the training dataset's manifest (the run's split), or, when
that dataset is not on this machine, from the checkpoint's classifier shape.

Where reports go (--output_dir overrides):
  same dataset as the run           DIR/eval
  another dataset (--data_dir)      DIR/eval_<dataset name>, and for a dataset with several
                                    splits DIR/eval_<dataset name>/split_<N>

Splits (--split): default the run's data.split (split 0 of a single-split dataset such as
MARS). `--split=all` evaluates every split of the tested dataset: reports of split N in
OUT/split_N, and OUT/metrics.json + metrics.md + cmc.png hold the mean and sample standard
deviation over the splits (`tfreid.metrics.splits`). A split whose test tracklets the run
trained on (another split of its own 10-split dataset) is refused.

Cross-dataset testing (a3d section IV-E, table X; stal section IV-E.1, table VI: train on
iLIDS-VID, test on PRID-2011, averaged over the 10 splits; siamese_convgru table VIII:
train on MARS, test on iLIDS-VID and PRID-2011):

    python -m tfreid.evaluate --model_dir=runs/nl_mars --data_dir=data/prid2011 --split=all
"""

import copy
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS
ALL_SPLITS = "all"


def define_flags():
  flags.DEFINE_string("model_dir", None, "Training directory (config.yaml, checkpoints).",
                      required=True)
  flags.DEFINE_string("checkpoint", "latest", "latest, best, a step number or a path.")
  flags.DEFINE_string("protocol", None, "torchreid or mars_matlab (MARS); default: "
                      "eval.protocol of the run's config (or the tested dataset's default "
                      "protocol when it lacks that one).")
  flags.DEFINE_bool("rerank", None, "k-reciprocal re-ranking (default: eval.rerank).")
  flags.DEFINE_string("data_dir", None, "Evaluate on this converted dataset instead of the "
                      "training one (cross-dataset testing).")
  flags.DEFINE_string("split", None, "Split N of a 10-split dataset, or 'all' for the mean "
                      "and std over every split (default: the run's data.split; 0 on a "
                      "single-split dataset).")
  flags.DEFINE_string("output_dir", None, "Where reports go (default MODEL_DIR/eval, or "
                      "MODEL_DIR/eval_<dataset> for another dataset).")
  flags.DEFINE_multi_string("override", [], "key.path=value changes to the run's config for "
                            "this evaluation, e.g. --override=data.skip_corrupt=true or "
                            "--override=eval.distance=cosine (the model's keys cannot change).")


def parse_split(value):
  """None, an int >= 0, or 'all' from the --split flag (or an evaluate_run argument)."""
  if value is None or value == "":
    return None
  if isinstance(value, int) and not isinstance(value, bool):
    parsed = value
  elif isinstance(value, str) and value.strip().lower() == ALL_SPLITS:
    return ALL_SPLITS
  elif isinstance(value, str) and value.strip().isdigit():
    parsed = int(value)
  else:
    raise ValueError(f"--split={value!r}: expected a split number (0, 1, ...) or 'all'.")
  if parsed < 0:
    raise ValueError(f"--split={value!r}: split numbers start at 0.")
  return parsed


def same_dataset(data_dir_a: str, data_dir_b: str) -> bool:
  """True when both directories hold the same converted dataset: the same path, or
  manifests naming the same dataset with identical splits (a copy of the conversion)."""
  from tfreid.data import schema  # pylint: disable=import-outside-toplevel
  if os.path.realpath(data_dir_a) == os.path.realpath(data_dir_b):
    return True
  try:
    a, b = schema.read_manifest(data_dir_a), schema.read_manifest(data_dir_b)
  except schema.DatasetError:
    return False
  return a.get("dataset") == b.get("dataset") and a.get("splits") == b.get("splits")


def num_training_identities(config, checkpoint_path: str) -> int:
  """Classes of the run's classifier (`tfreid.training.restore.num_training_identities`)."""
  from tfreid.training import restore  # pylint: disable=import-outside-toplevel
  return restore.num_training_identities(config, checkpoint_path)


def restore_model(config, checkpoint_path: str, num_classes: int):
  """The run's model restored from `checkpoint_path`, and the checkpoint's step
  (`tfreid.training.restore.restore_model`)."""
  from tfreid.training import restore  # pylint: disable=import-outside-toplevel
  return restore.restore_model(config, checkpoint_path, num_classes)


def _check_no_overlap(train_config, test_manifest, split: int, cross: bool) -> None:
  """Refuses a split of the run's own dataset whose test tracklets the run trained on."""
  if cross:
    return
  from tfreid.data import schema  # pylint: disable=import-outside-toplevel
  trained = set(schema.read_manifest(train_config.data.data_dir)["splits"]
                [train_config.data.split].get("train", []))
  parts = test_manifest["splits"][split]
  tested = {t for name, ids in parts.items() if name not in ("train", "train_pids")
            for t in ids}
  overlap = trained & tested
  if overlap:
    raise ValueError(
        f"split {split} of {train_config.data.data_dir} tests {len(overlap)} tracklet(s) that "
        f"this run trained on (it was trained on split {train_config.data.split}): its "
        f"numbers would be meaningless. Evaluate split {train_config.data.split}, or train "
        "every split with `python -m tfreid.splits`.")


def apply_overrides(config, overrides) -> None:
  """Applies evaluation overrides: data.*, eval.*, export.*, runtime.* keys and the
  method's test-time switches (`tfreid.models.contract.test_time_keys`); any other key of
  the model or its training is refused (the checkpoint fixes the model)."""
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  from tfreid.models import contract  # pylint: disable=import-outside-toplevel
  switches = contract.test_time_keys(config)
  for override in overrides or ():
    key = override.split("=", 1)[0].strip()
    if key.split(".")[0] in ("model", "losses", "optimizer", "schedule",
                             "trainer") and key not in switches:
      allowed = (f", and the method's test-time switches {', '.join(switches)}" if switches
                 else "")
      raise ValueError(f"--override={override}: evaluation takes the model of its checkpoint; "
                       f"only data.*, eval.*, export.* and runtime.* keys{allowed} can change "
                       "here.")
    cfg.apply_override(config, override)


def evaluate_run(model_dir, checkpoint="latest", protocol=None, rerank=None, data_dir=None,
                 split=None, output_dir=None, overrides=()) -> dict:
  """Restores a run and evaluates it; returns the metrics.json record written.

  Args:
    model_dir: a training directory (config.yaml, checkpoints).
    checkpoint: "latest", "best", a step number or a checkpoint path.
    protocol: a protocol of the tested dataset (default: the run's eval.protocol, or the
      tested dataset's default protocol when it lacks that one).
    rerank: k-reciprocal re-ranking (default: the run's eval.rerank).
    data_dir: a converted dataset other than the run's (cross-dataset testing).
    split: a split number, "all" (mean and std over every split), or None (the run's
      data.split; 0 on a single-split dataset).
    output_dir: where reports go (module docstring for the default).
    overrides: key.path=value changes to the run's config (data.*, eval.*, export.*,
      runtime.*, and the method's test-time switches, its module's `TEST_TIME_KEYS`; any
      other model.* or losses.* key is refused: the checkpoint fixes the model).

  Returns:
    The record of metrics.json: for one split the contract keys plus `trained_on`,
    `tested_on`, `cross_dataset`, `checkpoint`; for "all" the means, `*_std` and
    `per_split` (`tfreid.training.evaluation.aggregate_records`).
  """
  config_path = os.path.join(model_dir, "config.yaml")
  if not os.path.exists(config_path):  # before importing TensorFlow: fail fast
    raise FileNotFoundError(f"{config_path} does not exist: {model_dir!r} is not a training "
                            "directory written by `python -m tfreid.train`.")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  from tfreid.data import schema  # pylint: disable=import-outside-toplevel
  from tfreid.training import checkpoints  # pylint: disable=import-outside-toplevel
  from tfreid.training import evaluation  # pylint: disable=import-outside-toplevel

  config = cfg.load_config(config_path)
  apply_overrides(config, overrides)
  config.validate()
  split = parse_split(split)
  path = checkpoints.resolve_checkpoint(model_dir, checkpoint)
  num_classes = num_training_identities(config, path)
  test_dir = data_dir or config.data.data_dir
  cross = not same_dataset(config.data.data_dir, test_dir) if data_dir else False
  test_manifest = schema.read_manifest(test_dir)
  num_splits = len(test_manifest.get("splits", []))
  if split == ALL_SPLITS:
    splits = list(range(num_splits))
  else:
    # Default: the run's own split (a3d and stal pair iLIDS-VID split i with PRID-2011
    # split i), or the only split of a single-split dataset.
    chosen = split if split is not None else (config.data.split if num_splits > 1 else 0)
    if chosen >= num_splits:
      why = " (the run's data.split, the default)" if split is None else ""
      raise ValueError(f"{test_dir} ({test_manifest.get('dataset')}) has {num_splits} "
                       f"split(s) (0..{num_splits - 1}) and split {chosen} was asked for"
                       f"{why}: pass --split=N with N in that range, or --split=all.")
    splits = [chosen]
  for s in splits:
    _check_no_overlap(config, test_manifest, s, cross)

  model, step = restore_model(config, path, num_classes)
  step = 0 if step is None else step
  if output_dir:
    out_dir = output_dir
  elif cross:
    # The dataset's name comes from its manifest: one safe path component, never a path.
    out_dir = os.path.join(model_dir,
                           f"eval_{schema.path_component(test_manifest.get('dataset'))}")
  else:
    out_dir = os.path.join(model_dir, "eval")
  per_split_dirs = split == ALL_SPLITS or (cross and not output_dir and num_splits > 1)

  trained_on = evaluation.dataset_info(config.data.data_dir, config.data.split) \
      if os.path.exists(os.path.join(config.data.data_dir, schema.MANIFEST_NAME)) else \
      {"dataset": None, "data_dir": os.path.abspath(config.data.data_dir),
       "split": int(config.data.split)}
  trained_on["num_identities"] = int(num_classes)
  records = []
  for s in splits:
    eval_config = copy.deepcopy(config)
    eval_config.data.data_dir = test_dir
    eval_config.data.split = s
    result = evaluation.evaluate_model(eval_config, model, protocol=protocol, rerank=rerank)
    split_dir = os.path.join(out_dir, f"split_{s}") if per_split_dirs else out_dir
    writer = tf.summary.create_file_writer(split_dir)
    extra = {"trained_on": trained_on, "tested_on": evaluation.dataset_info(test_dir, s),
             "cross_dataset": bool(cross), "checkpoint": path,
             "checkpoint_selection": checkpoints.checkpoint_selection(checkpoint)}
    records.append(evaluation.write_reports(eval_config, result, split_dir, step,
                                            writer=writer, extra=extra))
    writer.close()
  if split != ALL_SPLITS:
    return records[0]

  aggregate = {"experiment": config.experiment, "protocol": records[0]["protocol"],
               "checkpoint_step": step, "split": ALL_SPLITS}
  aggregate.update(evaluation.aggregate_records(records))
  dataset = test_manifest.get("dataset")
  aggregate.update({
      "trained_on": trained_on,
      "tested_on": {"dataset": dataset, "data_dir": os.path.abspath(test_dir),
                    "split": ALL_SPLITS, "num_splits": num_splits},
      "cross_dataset": bool(cross), "checkpoint": path,
      "checkpoint_selection": checkpoints.checkpoint_selection(checkpoint),
      "protocol_description": evaluation.protocol_description(
          test_dir, records[0]["protocol"].split("+")[0])})
  title = (f"{config.experiment} at step {step}, tested on every split of {dataset}"
           + (f" (trained on {trained_on['dataset']} split {trained_on['split']})"
              if cross else ""))
  description = (f"Protocol: {aggregate['protocol_description']}. "
                 + evaluation.spread_sentence(aggregate))
  writer = tf.summary.create_file_writer(out_dir)
  evaluation.write_aggregate_reports(out_dir, aggregate, title, description, writer=writer,
                                     step=step)
  writer.close()
  return aggregate


def format_summary(record: dict) -> str:
  """The console summary of an evaluate_run record (one split or the mean over splits)."""
  keys = ("rank1", "rank5", "rank10", "rank20", "mAP")
  if record.get("split") == ALL_SPLITS:
    head = (f"{record['experiment']} | protocol {record['protocol']} | step "
            f"{record['checkpoint_step']} | mean ± std over {record['num_splits']} splits")
    cells = [f"{100 * record[k]:.1f}" + ("" if record[f"{k}_std"] is None else
                                         f" ± {100 * record[f'{k}_std']:.1f}") for k in keys]
  else:
    head = (f"{record['experiment']} | protocol {record['protocol']} | step "
            f"{record['checkpoint_step']} | {record['num_valid_queries']} queries")
    cells = [f"{100 * record[k]:.1f}" for k in keys]
  tested = record.get("tested_on") or {}
  if tested.get("dataset"):
    head += f" | tested on {tested['dataset']}"
  if record.get("checkpoint_selection", "").startswith("best"):
    head += " | checkpoint selected on the test set (report the final one)"
  return "\n".join([head, "| rank-1 | rank-5 | rank-10 | rank-20 | mAP |",
                    "| --- | --- | --- | --- | --- |", "| " + " | ".join(cells) + " |"])


def main(argv):
  del argv
  from tfreid import console  # pylint: disable=import-outside-toplevel
  record = console.run_cli(lambda: evaluate_run(
      FLAGS.model_dir, FLAGS.checkpoint, FLAGS.protocol, FLAGS.rerank, FLAGS.data_dir,
      FLAGS.split, FLAGS.output_dir, FLAGS.override))
  print("\n" + format_summary(record))


if __name__ == "__main__":
  from tfreid import console  # pylint: disable=import-outside-toplevel
  console.quiet_tensorflow_start()
  define_flags()
  app.run(main)
