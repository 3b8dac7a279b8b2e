"""Export a trained model as a SavedModel for TF Serving.

    python -m tfreid.export --model_dir=DIR --export_dir=OUT
        [--checkpoint=latest|best|STEP|PATH] [--version=N]

Writes OUT/<version>/ (TF Serving's layout: OUT is the model base path; version =
export.version of the run's config, 0 meaning the next free integer starting at 1; --version
overrides it) with the signatures ``serving_default`` (uint8 clips [B, T, H, W, 3] ->
{"embedding": float32 [B, D]}), ``embed_tracklet`` (uint8 frames [N, H, W, 3] of one
tracklet -> its evaluation feature [1, D]) and, for models with a learned metric,
``distance``; and assets/config.yaml, assets/model_card.json. Prints the version directory.
See tfreid/serving/export_module.py for the signatures.
"""

import os
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("model_dir", None, "Training directory (config.yaml, checkpoints).",
                      required=True)
  flags.DEFINE_string("export_dir", None, "TF Serving model base path; the SavedModel goes "
                      "to EXPORT_DIR/<version>/.", required=True)
  flags.DEFINE_string("checkpoint", "latest", "latest, best, a step number or a path.")
  flags.DEFINE_integer("version", None, "Version directory (default: export.version of the "
                       "config; 0: the next free integer, starting at 1).")


def main(argv):
  del argv
  config_path = os.path.join(FLAGS.model_dir, "config.yaml")
  if not os.path.exists(config_path):  # before importing TensorFlow: fail fast
    print(f"error: {config_path} does not exist: {FLAGS.model_dir!r} is not a training "
          "directory written by `python -m tfreid.train`.", file=sys.stderr)
    sys.exit(2)
  from tfreid import console  # pylint: disable=import-outside-toplevel
  from tfreid import serving  # pylint: disable=import-outside-toplevel
  path = console.run_cli(lambda: serving.export_run(FLAGS.model_dir, FLAGS.export_dir,
                                                    FLAGS.checkpoint, FLAGS.version))
  print(path)


if __name__ == "__main__":
  from tfreid import console  # pylint: disable=import-outside-toplevel
  console.quiet_tensorflow_start()
  define_flags()
  app.run(main)
