"""The `best` checkpoint is labelled as selected on the test set wherever it appears."""

import json
import logging
import os

import tensorflow as tf

from tfreid import evaluate
from tfreid.training import checkpoints


def test_selection_labels():
  assert checkpoints.checkpoint_selection("latest").startswith("latest")
  assert checkpoints.checkpoint_selection("").startswith("latest")
  for best in ("best", "runs/nl/best/ckpt-40", "runs/nl/best"):
    label = checkpoints.checkpoint_selection(best)
    assert label.startswith("best") and "test set" in label, best
  assert checkpoints.checkpoint_selection("1200").startswith("given")
  assert checkpoints.checkpoint_selection("runs/nl/ckpt-1200").startswith("given")


def test_best_record_and_fine_tuning_from_it_say_test_set(tmp_path, caplog):
  step = tf.Variable(0, dtype=tf.int64)
  keeper = checkpoints.CheckpointKeeper(tf.train.Checkpoint(step=step), str(tmp_path), keep=2,
                                        step_counter=step)
  keeper.save(10)
  assert keeper.maybe_save_best(10, {"mAP": 0.25, "rank1": 0.5})
  with open(os.path.join(tmp_path, "best", "best_metrics.json")) as f:
    record = json.load(f)
  assert record["selection"] == checkpoints.SELECTION_BEST and record["step"] == 10
  with caplog.at_level(logging.WARNING):
    path = checkpoints.resolve_init_checkpoint(os.path.join(str(tmp_path), "best"))
  assert path.endswith(os.path.join("best", "ckpt-10"))
  assert "selected by test-set mAP" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    path = checkpoints.resolve_init_checkpoint(str(tmp_path))
  assert path == os.path.join(str(tmp_path), "ckpt-10") and "test-set" not in caplog.text


def test_console_summary_flags_a_test_selected_checkpoint():
  record = {"experiment": "nonlocal_i3d", "protocol": "torchreid", "checkpoint_step": 7,
            "num_valid_queries": 3, "rank1": 0.5, "rank5": 0.75, "rank10": 1.0,
            "rank20": 1.0, "mAP": 0.6}
  final = evaluate.format_summary(dict(record,
                                       checkpoint_selection=checkpoints.SELECTION_LATEST))
  assert "test set" not in final and "| 50.0 | 75.0 | 100.0 | 100.0 | 60.0 |" in final
  best = evaluate.format_summary(dict(record, checkpoint_selection=checkpoints.SELECTION_BEST))
  assert "checkpoint selected on the test set" in best.splitlines()[0]
