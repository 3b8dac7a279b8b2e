r"""Train and evaluate every split of a 10-split dataset; report mean ± std over splits.

    python -m tfreid.splits --experiment=nonlocal_i3d:ilidsvid --data_dir=DATA/ilidsvid \
        --model_dir=runs/nl_ilidsvid --override=trainer.init_checkpoint=runs/nl \
        [--splits=all|0,1,2|0-4] [--config_file=F.yaml ...] \
        [--override=key.path=value ...] [--protocol=...] [--rerank]

(nonlocal_i3d:ilidsvid and :prid2011 fine-tune a MARS run, here runs/nl's final checkpoint,
and stop without trainer.init_checkpoint.)

iLIDS-VID and PRID-2011 are evaluated on 10 train/test person splits, and papers report
the mean over them (REFERENCE_FACTS.md; a3d section IV-A, stal section IV-A,
siamese_convgru section V-C, diversity_attention section 4.1). For each chosen split N this
trains the experiment with `data.split=N` into MODEL_DIR/split_N (the same run as
`python -m tfreid.train ... --override=data.split=N`), evaluates the final model (dense
test features, `eval.protocol` / `--protocol`, `eval.rerank` / `--rerank`) into
MODEL_DIR/split_N/eval (metrics.json, metrics.md, cmc.png, rank lists, TensorBoard), and
then writes:

- MODEL_DIR/splits.json: `rank1`, `rank5`, `rank10`, `rank20`, `mAP` (fractions, means over
  the splits), `rank1_std` ... `mAP_std`, `per_split` (each split's numbers, step), `splits`,
  `protocol`, `protocol_description`, `std`, `complete` (every split of the dataset done);
- MODEL_DIR/splits.md: one row per split and a last row "mean ± std", in %;
- MODEL_DIR/splits_cmc.png: the mean CMC curve.

Which std: the *sample* standard deviation over the splits (ddof=1), as MATLAB's `std`
computes it and as "mean ± std" over repeated random splits is conventionally reported
(`tfreid.metrics.splits` says why). With a single split it is undefined and written as null.
The mean is what papers' tables print; compare with their numbers on all 10 splits.

Resuming: a split whose MODEL_DIR/split_N/eval/metrics.json exists is not trained or
evaluated again (delete that file to redo it); a split with checkpoints but no metrics
resumes training from its newest checkpoint (the trainer's resume) and is then evaluated.
Running the same command again after an interruption finishes the remaining splits.

Fine-tuning (nonlocal_i3d section 4.4.2: iLIDS-VID and PRID-2011 fine-tuned from the MARS
model): `--override=trainer.init_checkpoint=runs/nl_mars/ckpt-N` is passed to every split,
whose trainer starts from that checkpoint (its classifier is skipped).

`data.split` is set by this driver: choose splits with --splits, not with --override.
"""

from __future__ import annotations

import gc
import json
import os
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
SUMMARY_JSON = "splits.json"
SUMMARY_MD = "splits.md"
SUMMARY_CMC = "splits_cmc.png"


def define_flags():
  flags.DEFINE_string("experiment", None, "Experiment NAME or NAME:VARIANT (experiments/). "
                      "Optional when --config_file is a config.yaml written by a run.")
  flags.DEFINE_string("model_dir", None, "Directory of the runs: split N trains into "
                      "MODEL_DIR/split_N; splits.json and splits.md go here.", required=True)
  flags.DEFINE_string("data_dir", None, "Converted 10-split dataset (manifest.json); "
                      "overrides data.data_dir.")
  flags.DEFINE_string("splits", "all", "Splits to run: all, or a list such as 0,1,2 or 0-4.")
  flags.DEFINE_multi_string("config_file", [], "YAML overlays, applied in order.")
  flags.DEFINE_multi_string("override", [], "key.path=value overrides for every split, "
                            "e.g. --override=trainer.init_checkpoint=runs/mars/ckpt-900.")
  flags.DEFINE_string("protocol", None, "Evaluation protocol (default: eval.protocol, or "
                      "the dataset's own).")
  flags.DEFINE_bool("rerank", None, "k-reciprocal re-ranking (default: eval.rerank).")


def parse_splits(value: str | Sequence[int] | None, num_splits: int) -> list[int]:
  """Split numbers from "all", "0,1,2", "0-4", "3" or a list of ints; sorted, unique.

  Raises:
    ValueError: an unreadable value, or a split outside 0..num_splits - 1.
  """
  if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all")):
    return list(range(num_splits))
  if isinstance(value, str):
    chosen = set()
    for part in value.split(","):
      part = part.strip()
      bounds = part.split("-")
      if not part or not all(b.strip().isdigit() for b in bounds) or len(bounds) > 2:
        raise ValueError(f"--splits={value!r}: expected 'all' or split numbers and ranges "
                         "separated by commas, e.g. --splits=0,1,2 or --splits=0-4.")
      low, high = int(bounds[0]), int(bounds[-1])
      if low > high:
        raise ValueError(f"--splits={value!r}: range {part} goes downwards; write {high}-{low}.")
      chosen.update(range(low, high + 1))
  else:
    chosen = {int(v) for v in value}
  bad = sorted(s for s in chosen if not 0 <= s < num_splits)
  if bad or not chosen:
    raise ValueError(f"--splits={value!r}: the dataset has {num_splits} split(s), numbered "
                     f"0..{num_splits - 1}; got {bad or 'none'}.")
  return sorted(chosen)


def split_dir(model_dir: str, split: int) -> str:
  """The training directory of split `split`: MODEL_DIR/split_N."""
  return os.path.join(model_dir, f"split_{split}")


def metrics_path(model_dir: str, split: int) -> str:
  """MODEL_DIR/split_N/eval/metrics.json: when it exists, split N is done."""
  return os.path.join(split_dir(model_dir, split), "eval", "metrics.json")


def _check_overrides(overrides: Sequence[str]) -> None:
  """Refuses --override=data.split=...: the driver sets it."""
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  for item in overrides:
    if item.split("=", 1)[0].strip() == "data.split":
      raise cfg.ConfigError(f"--override={item}: the splits driver sets data.split for each "
                            "split; choose splits with --splits=0,1,... instead.")


def _read_record(path: str, split: int) -> dict:
  """The metrics.json of a finished split, checked to be that split's."""
  with open(path) as f:
    record = json.load(f)
  if record.get("split") != split:
    raise ValueError(f"{path} holds the metrics of split {record.get('split')!r}, not split "
                     f"{split}: the directory was not written by this driver. Delete it to "
                     "train and evaluate the split again.")
  return record


def train_and_evaluate_split(config, model_dir: str, strategy=None, protocol=None,
                             rerank=None) -> Optional[dict]:
  """Trains `config` (its data.split) into `model_dir` (resuming), evaluates the final
  model into model_dir/eval; returns the metrics.json record, or None when training
  stopped early on a signal (nothing evaluated; run again to resume)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  from tfreid.training import evaluation  # pylint: disable=import-outside-toplevel
  from tfreid.training import trainer as trainer_lib  # pylint: disable=import-outside-toplevel

  trainer = trainer_lib.Trainer(config, model_dir, strategy=strategy)
  if trainer.chief:
    cfg.save_config(config, os.path.join(model_dir, "config.yaml"))
  trainer.train()
  step = int(trainer.global_step.numpy())
  if step < trainer.total_steps:
    logging.warning("Split %d stopped at step %d of %d; run the same command to resume.",
                    config.data.split, step, trainer.total_steps)
    return None
  if not trainer.chief:
    return {}
  result = evaluation.evaluate_model(config, trainer.model, protocol=protocol, rerank=rerank)
  out_dir = os.path.join(model_dir, "eval")
  writer = tf.summary.create_file_writer(out_dir)
  info = evaluation.dataset_info(config.data.data_dir, config.data.split)
  info["num_identities"] = int(trainer.num_classes)
  extra = {"trained_on": info, "tested_on": evaluation.dataset_info(config.data.data_dir,
                                                                    config.data.split),
           "cross_dataset": False, "checkpoint": trainer.keeper.latest}
  record = evaluation.write_reports(config, result, out_dir, step, writer=writer, extra=extra)
  writer.close()
  return record


def run_splits(experiment: str, model_dir: str, data_dir: str = "", splits="all",
               config_files: Sequence[str] = (), overrides: Sequence[str] = (),
               protocol: Optional[str] = None, rerank: Optional[bool] = None,
               strategy=None) -> Optional[dict]:
  """Trains and evaluates the chosen splits, then writes splits.json and splits.md.

  Args:
    experiment: NAME or NAME:VARIANT.
    model_dir: parent directory: split N trains into model_dir/split_N.
    data_dir: the converted dataset (overrides data.data_dir).
    splits: "all", "0,1,2", "0-4", or a list of split numbers.
    config_files, overrides: as for `python -m tfreid.train`, applied to every split.
    protocol, rerank: evaluation options (default: the config's).
    strategy: a tf.distribute strategy shared by every split (default: one made from
      runtime.strategy, made once: strategies are not re-created per split).

  Returns:
    The splits.json record (module docstring), or None when training stopped early on a
    signal (run again to resume).
  """
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  from tfreid.data import schema  # pylint: disable=import-outside-toplevel
  from tfreid.training import evaluation  # pylint: disable=import-outside-toplevel
  from tfreid.training import strategy as strategy_lib  # pylint: disable=import-outside-toplevel

  overrides = list(overrides)
  _check_overrides(overrides)
  base = cfg.build_config(experiment, list(config_files), overrides, data_dir=data_dir or "")
  manifest = schema.read_manifest(base.data.data_dir)
  num_splits = len(manifest["splits"])
  chosen = parse_splits(splits, num_splits)
  if num_splits == 1:
    logging.warning("%s (%s) has a single split: its standard deviation is undefined. "
                    "`python -m tfreid.train` and `python -m tfreid.evaluate` do the same.",
                    base.data.data_dir, manifest.get("dataset"))
  # Decided before anything runs, so every worker of a multi-worker run agrees.
  done = {s: os.path.exists(metrics_path(model_dir, s)) for s in chosen}
  logging.info("Splits %s of %s: %s already evaluated.", chosen, manifest.get("dataset"),
               [s for s in chosen if done[s]] or "none")
  to_train = [s for s in chosen if not done[s]]
  if to_train and strategy is None:
    strategy = strategy_lib.create_strategy(base.runtime)
  chief = strategy_lib.is_chief(strategy) if strategy is not None else _chief_from_env()
  records = []
  for s in chosen:
    if done[s]:
      records.append(_read_record(metrics_path(model_dir, s), s))
      logging.info("Split %d: %s exists, not retrained.", s, metrics_path(model_dir, s))
      continue
    config = cfg.build_config(experiment, list(config_files), overrides + [f"data.split={s}"],
                              data_dir=data_dir or "")
    record = train_and_evaluate_split(config, split_dir(model_dir, s), strategy=strategy,
                                      protocol=protocol, rerank=rerank)
    _release_memory()
    if record is None:
      return None
    records.append(record)
  if not chief:  # the chief worker evaluates and writes the reports
    return None

  aggregate = {"experiment": base.experiment, "dataset": manifest.get("dataset"),
               "data_dir": os.path.abspath(base.data.data_dir),
               "protocol": records[0]["protocol"]}
  aggregate.update(evaluation.aggregate_records(records))
  aggregate["dataset_num_splits"] = num_splits
  aggregate["complete"] = sorted(chosen) == list(range(num_splits))
  aggregate["protocol_description"] = evaluation.protocol_description(
      base.data.data_dir, records[0]["protocol"].split("+")[0], chosen[0])
  aggregate["runs"] = {str(s): os.path.relpath(split_dir(model_dir, s), model_dir)
                       for s in chosen}
  if aggregate["complete"]:
    which = f"all {num_splits} splits" if num_splits > 1 else "its single split"
  else:
    which = (f"split{'s' if len(chosen) > 1 else ''} " + ", ".join(str(s) for s in chosen)
             + f" of {num_splits}")
  title = f"{base.experiment} on {manifest.get('dataset')}: {which}"
  description = (f"Protocol: {aggregate['protocol_description']}. "
                 + evaluation.spread_sentence(aggregate)
                 + ("" if aggregate["complete"] else " Not every split was run: papers "
                    f"report the mean over all {num_splits}."))
  evaluation.write_aggregate_reports(model_dir, aggregate, title, description,
                                     json_name=SUMMARY_JSON, md_name=SUMMARY_MD,
                                     cmc_name=SUMMARY_CMC)
  return aggregate


def _chief_from_env() -> bool:
  """Whether this process is the chief of a multi-worker job (TF_CONFIG), without making a
  strategy: true without TF_CONFIG, for the "chief" task and for worker 0."""
  try:
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
  except json.JSONDecodeError:
    return True
  return task.get("type") in (None, "chief") or (task.get("type") == "worker"
                                                 and int(task.get("index", 0)) == 0)


def _release_memory() -> None:
  """Drops the finished split's model and traced functions before the next split."""
  import keras  # pylint: disable=import-outside-toplevel
  keras.backend.clear_session()
  gc.collect()


def main(argv):
  del argv
  from tfreid import train  # pylint: disable=import-outside-toplevel

  def run():
    experiment = train.resolve_experiment(FLAGS.experiment, FLAGS.config_file)
    return run_splits(experiment, FLAGS.model_dir, FLAGS.data_dir or "", FLAGS.splits,
                      FLAGS.config_file, FLAGS.override, FLAGS.protocol, FLAGS.rerank)

  aggregate = train.run_reporting_errors(run)
  if aggregate is None:
    print("Stopped before every split was evaluated; run the same command to resume.")
    from tfreid import console  # pylint: disable=import-outside-toplevel
    console.exit_now(console.EXIT_STOPPED)
  with open(os.path.join(FLAGS.model_dir, SUMMARY_MD), encoding="utf-8") as f:
    print("\n" + f.read())


if __name__ == "__main__":
  from tfreid import console  # pylint: disable=import-outside-toplevel
  console.quiet_tensorflow_start()
  define_flags()
  app.run(main)
