"""Evaluate a trained model.

    python -m tfreid.evaluate --model_dir=DIR [--checkpoint=latest|best|STEP|PATH]
        [--protocol=torchreid|mars_matlab] [--rerank] [--data_dir=DIR] [--split=N]

Restores the checkpoint, extracts dense test features (every clip of every tracklet,
averaged per tracklet), evaluates, and writes DIR/eval/metrics.json (rank1, rank5, rank10,
rank20, mAP as fractions, protocol, checkpoint_step), DIR/eval/metrics.md, DIR/eval/cmc.png
and rank-list PNGs (DIR/eval/rank_lists/), also to TensorBoard (DIR/eval).

Cross-dataset testing: --data_dir=ANOTHER_CONVERTED_DATASET evaluates the model on it.
"""

import os
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("model_dir", None, "Training directory (config.yaml, checkpoints).",
                      required=True)
  flags.DEFINE_string("checkpoint", "latest", "latest, best, a step number or a path.")
  flags.DEFINE_string("protocol", None, "torchreid or mars_matlab (MARS); default: "
                      "eval.protocol of the run's config.")
  flags.DEFINE_bool("rerank", None, "k-reciprocal re-ranking (default: eval.rerank).")
  flags.DEFINE_string("data_dir", None, "Evaluate on this converted dataset instead of the "
                      "training one (cross-dataset testing).")
  flags.DEFINE_integer("split", None, "Split of a 10-split dataset (default: data.split).")
  flags.DEFINE_string("output_dir", None, "Where reports go (default MODEL_DIR/eval).")


def evaluate_run(model_dir, checkpoint="latest", protocol=None, rerank=None, data_dir=None,
                 split=None, output_dir=None) -> dict:
  """Restores a run and evaluates it. Returns the metrics.json record."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  from tfreid.data import reader  # pylint: disable=import-outside-toplevel
  from tfreid.models import build_model  # pylint: disable=import-outside-toplevel
  from tfreid.training import checkpoints  # pylint: disable=import-outside-toplevel
  from tfreid.training import evaluation  # pylint: disable=import-outside-toplevel
  from tfreid.training import trainer  # pylint: disable=import-outside-toplevel

  config_path = os.path.join(model_dir, "config.yaml")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} does not exist: {model_dir!r} is not a training "
                            "directory written by `python -m tfreid.train`.")
  config = cfg.load_config(config_path)
  train_data_dir = config.data.data_dir
  num_classes = reader.load_partition(train_data_dir, "train",
                                      split=config.data.split).num_classes
  if data_dir:
    config.data.data_dir = data_dir
  if split is not None:
    config.data.split = split
  trainer.set_mixed_precision(config.runtime)
  model = build_model(config, num_classes)
  model(trainer.dummy_inputs(config), training=False)
  path = checkpoints.resolve_checkpoint(model_dir, checkpoint)
  ckpt = tf.train.Checkpoint(model=model)
  ckpt.restore(path).expect_partial()
  step = int(tf.train.load_checkpoint(path).get_tensor(
      "global_step/.ATTRIBUTES/VARIABLE_VALUE"))
  result = evaluation.evaluate_model(config, model, protocol=protocol, rerank=rerank)
  out_dir = output_dir or os.path.join(model_dir, "eval")
  writer = tf.summary.create_file_writer(out_dir)
  record = evaluation.write_reports(config, result, out_dir, step, writer=writer)
  record["checkpoint"] = path
  return record


def main(argv):
  del argv
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  from tfreid.data.schema import DatasetError  # pylint: disable=import-outside-toplevel
  try:
    record = evaluate_run(FLAGS.model_dir, FLAGS.checkpoint, FLAGS.protocol, FLAGS.rerank,
                          FLAGS.data_dir, FLAGS.split, FLAGS.output_dir)
  except (cfg.ConfigError, DatasetError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"\n{record['experiment']} | protocol {record['protocol']} | step "
        f"{record['checkpoint_step']} | {record['num_valid_queries']} queries")
  print("| rank-1 | rank-5 | rank-10 | rank-20 | mAP |")
  print("| --- | --- | --- | --- | --- |")
  print("| " + " | ".join(f"{100 * record[k]:.1f}" for k in
                          ("rank1", "rank5", "rank10", "rank20", "mAP")) + " |")


if __name__ == "__main__":
  define_flags()
  app.run(main)
