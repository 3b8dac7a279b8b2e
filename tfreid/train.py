"""Train a video ReID model.

    python -m tfreid.train --experiment=NAME[:VARIANT] --model_dir=DIR [--data_dir=DIR]
        [--config_file=F.yaml ...] [--override=key.path=value ...] [--profile_steps=A,B]

`NAME` alone is the paper's configuration; `NAME:synthetic` a scaled-down one for the
built-in synthetic dataset. Overlays apply in order: the experiment, each --config_file,
each --override (values parsed as YAML). The final config is written to DIR/config.yaml;
`--config_file=DIR/config.yaml` reproduces the run. Running the same command again resumes
from the newest checkpoint in DIR.

Exit codes: 0 finished; 2 a bad config, dataset or argument; 3 training cannot go on (a NaN
loss); 4 the disk is full; 143 stopped by SIGTERM (or a peer worker's) after saving a
checkpoint (run the same command to resume); 1 an unexpected error (traceback printed).
"""


from absl import app
from absl import flags

from tfreid import console

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("experiment", None, "Experiment NAME or NAME:VARIANT (experiments/). "
                      "Optional when --config_file is a config.yaml written by a run.")
  flags.DEFINE_string("model_dir", None, "Directory for checkpoints, summaries and "
                      "config.yaml.", required=True)
  flags.DEFINE_string("data_dir", None, "Converted dataset (manifest.json); overrides "
                      "data.data_dir.")
  flags.DEFINE_multi_string("config_file", [], "YAML overlays, applied in order.")
  flags.DEFINE_multi_string("override", [], "key.path=value overrides, applied in order, "
                            "e.g. --override=trainer.epochs=10.")
  flags.DEFINE_string("profile_steps", "", "A,B: capture a profiler trace from step A to "
                      "step B into MODEL_DIR/train (TensorBoard's Profile tab).")


def resolve_experiment(experiment, config_files):
  """--experiment, or the `experiment` key of the first config.yaml given."""
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  if experiment:
    return experiment
  for path in config_files:
    name = cfg.load_yaml_file(path).get("experiment")
    if name:
      return name
  raise cfg.ConfigError("--experiment is required (or a --config_file with an 'experiment' "
                        "key). Available experiments: " + ", ".join(cfg.list_experiments()))


def main(argv):
  del argv
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel

  def run():
    experiment = resolve_experiment(FLAGS.experiment, FLAGS.config_file)
    config = cfg.build_config(experiment, FLAGS.config_file, FLAGS.override,
                              data_dir=FLAGS.data_dir or "")
    from tfreid.training import trainer  # pylint: disable=import-outside-toplevel
    profile = trainer.parse_profile_steps(FLAGS.profile_steps)
    return trainer.run_training(config, FLAGS.model_dir, profile_steps=profile,
                                return_trainer=True)

  trainer = run_reporting_errors(run)
  if trainer.stopped_early:
    # The loop saved a checkpoint and logged the stop; a job scheduler must not take the run
    # for finished.
    console.exit_now(console.EXIT_STOPPED)


def run_reporting_errors(fn):
  """Runs `fn()` (`tfreid.console.run_cli`): a user error (bad config or dataset) exits with
  code 2, a NaN/Inf training stop with code 3, a full disk with 4, each printing only its
  message; a bug prints its traceback and exits with 1. Returns what `fn` returns."""
  return console.run_cli(fn)


if __name__ == "__main__":
  console.quiet_tensorflow_start()
  define_flags()
  app.run(main)
