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


# ------------------------------------------------------------------------ exit codes

EXIT_USER_ERROR = 2      # a bad config, dataset, checkpoint or argument: the message says
EXIT_TRAINING_ERROR = 3  # training cannot go on (a NaN loss): the message says what to do
EXIT_DISK_FULL = 4       # no space left while writing
EXIT_STOPPED = 143       # stopped on SIGTERM (or a peer worker's) after saving a checkpoint
EXIT_INTERRUPTED = 130   # Ctrl-C
EXIT_BUG = 1             # anything else: the traceback is printed

# An error raised inside a tf.data function (the record reader) reaches Python wrapped in a
# TensorFlow error whose text holds the original "DatasetError: <message>".
_WRAPPED = re.compile(r"(?:DatasetError|RecordError|ConfigError): (.+?)(?:\n|$)")


def user_error_types() -> tuple:
  from tfreid.config import ConfigError  # pylint: disable=import-outside-toplevel
  from tfreid.data.schema import DatasetError  # pylint: disable=import-outside-toplevel
  return (ConfigError, DatasetError, ValueError, FileNotFoundError)


def classify(error: BaseException) -> tuple[int, str | None]:
  """(exit code, one-line message or None for a bug whose traceback must be shown)."""
  import errno  # pylint: disable=import-outside-toplevel
  if isinstance(error, KeyboardInterrupt):
    return EXIT_INTERRUPTED, "interrupted; run the same command to resume from the last checkpoint."
  try:
    from tfreid.training.trainer import TrainingError  # pylint: disable=import-outside-toplevel
    if isinstance(error, TrainingError):
      return EXIT_TRAINING_ERROR, str(error)
  except ImportError:
    pass
  if isinstance(error, OSError) and error.errno == errno.ENOSPC:
    return EXIT_DISK_FULL, (f"no space left on the device ({error}). Checkpoints and reports "
                            "are written to a temporary name and renamed, so the last complete "
                            "ones are intact: free some space and run the same command to "
                            "resume.")
  if isinstance(error, user_error_types()):
    return EXIT_USER_ERROR, str(error)
  from tfreid.training.run_lock import RunDirectoryBusy  # pylint: disable=import-outside-toplevel
  if isinstance(error, RunDirectoryBusy):
    return EXIT_USER_ERROR, str(error)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if isinstance(error, tf.errors.OpError):
    found = _WRAPPED.search(error.message or "")
    if found:
      return EXIT_USER_ERROR, found.group(1).strip()
    if "No space left on device" in (error.message or ""):
      return EXIT_DISK_FULL, ("no space left on the device while writing; free some space and "
                              "run the same command to resume from the last checkpoint.")
  return EXIT_BUG, None


def exit_now(code: int) -> None:
  """Ends the process with `code` at once, after flushing the console and the logs.

  `os._exit`: background threads of TensorFlow (a tf.data reader still running when an
  error stopped the main loop) must not keep a failed job alive; every file tfreid writes
  is complete (written under a temporary name and renamed) before this point."""
  if "tfreid.training.run_lock" in sys.modules:
    sys.modules["tfreid.training.run_lock"].release_all()
  logging.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def run_cli(fn):
  """Runs an entry point's body: returns its result, or reports an error in one message
  (`error: ...`) and ends the process with the code of `classify`; an unexpected error
  prints its traceback and exits with EXIT_BUG."""
  try:
    return fn()
  except SystemExit:
    raise
  except BaseException as e:  # pylint: disable=broad-except
    code, message = classify(e)
    if message is None:
      import traceback  # pylint: disable=import-outside-toplevel
      traceback.print_exc()
    else:
      print(f"error: {message}", file=sys.stderr)
    exit_now(code)
