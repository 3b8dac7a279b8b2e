"""A readable console for the entry points (`python -m tfreid.train` and the others).

TensorFlow prints start-up lines from C++ before any Python setting can reach its logger
(the oneDNN notice, "Could not find cuda drivers", "failed call to cuInit" on a CPU machine,
the CPU-feature notice), and INFO lines of its own during a run. By default the entry
points hide them: `quiet_tensorflow_start()` sets TF_CPP_MIN_LOG_LEVEL=2 (TensorFlow's C++
warnings and errors stay) and starts TensorFlow with the process's standard error
redirected to a file, then prints again every captured line that is not one of the known
start-up notices, so no real error is lost; TensorFlow's Python INFO lines (the strategy's
devices, one line per checkpoint save) are hidden too. tfreid's own INFO lines (what is
trained, resumed, evaluated) are kept.

`--verbosity=N` (absl's flag, given explicitly) leaves everything as TensorFlow prints it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

# Start-up lines of a TensorFlow CPU build that say nothing about the run.
NOTICES = (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers on your machine",
    r"failed call to cuInit",
    r"cpu_feature_guard",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: ",
    r"rebuild TensorFlow with the appropriate compiler flags",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
)
_NOTICE = re.compile("|".join(NOTICES))


def verbosity_requested(argv) -> bool:
  """True when the command line sets absl's --verbosity (or -v)."""
  return any(a == "-v" or a.startswith(("--verbosity", "-v=")) for a in argv[1:])


def is_notice(line: str) -> bool:
  return bool(_NOTICE.search(line))


def quiet_tensorflow_start(argv=None) -> None:
  """Imports TensorFlow and initialises its devices with the start-up notices hidden
  (module docstring). Does nothing but the import with --verbosity."""
  argv = sys.argv if argv is None else argv
  if verbosity_requested(argv):
    import tensorflow  # pylint: disable=import-outside-toplevel,unused-import
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      # Queries the platforms (the cuInit line comes here) without creating the eager
      # context: a multi-worker strategy must still configure it later.
      tf.config.list_physical_devices()
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
    captured.seek(0)
    text = captured.read().decode("utf-8", "replace")
  kept = [line for line in text.splitlines() if line.strip() and not is_notice(line)]
  if kept:
    print("\n".join(kept), file=sys.stderr)
  # TensorFlow's own Python INFO lines ("Using MirroredStrategy ...", a "Sharding callback
  # duration" line per checkpoint save); its warnings and errors stay.
  logging.getLogger("tensorflow").setLevel(logging.WARNING)
  logging.getLogger("absl").addFilter(_drop_tensorflow_info)


def _drop_tensorflow_info(record: logging.LogRecord) -> bool:
  """False (drop) for an INFO-or-lower record logged through absl from TensorFlow's own
  code (e.g. the checkpoint saver's per-save line)."""
  path = record.pathname.replace(os.sep, "/")
  return record.levelno >= logging.WARNING or "/tensorflow/" not in path
