"""The entry points' console: TensorFlow's start-up notices hidden, real errors kept."""

import os
import subprocess
import sys

from tfreid import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NOTICE_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796513145.235555    3615 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results",
    "I0000 00:00:1796513145.236085    3615 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796513477.548189    6689 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
]


def test_known_notices_are_recognised_and_other_lines_are_not():
  assert all(console.is_notice(line) for line in NOTICE_LINES)
  for line in ("E0000 00:00:1.0 1 op_kernel.cc:1] OOM when allocating tensor",
               "error: data.split must be >= 0", "Segmentation fault"):
    assert not console.is_notice(line)


def test_verbosity_flag_is_detected():
  assert console.verbosity_requested(["train", "--verbosity=1"])
  assert console.verbosity_requested(["train", "-v", "1"])
  assert not console.verbosity_requested(["train", "--model_dir=x"])


def _start(*argv):
  code = ("import sys; from tfreid import console; "
          f"console.quiet_tensorflow_start({['prog', *argv]!r}); "
          "import tensorflow as tf; tf.constant(1) + 1; "
          "import logging; logging.getLogger('tensorflow').info('TF-INFO-LINE'); "
          "print('started', file=sys.stderr)")
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120).stderr


def test_quiet_start_hides_the_notices_and_verbosity_shows_them():
  quiet = _start()
  assert "started" in quiet
  assert not [line for line in quiet.splitlines() if console.is_notice(line)], quiet
  assert "TF-INFO-LINE" not in quiet
  verbose = _start("--verbosity=0")
  assert "started" in verbose
  # What TensorFlow prints at start-up depends on the machine; whatever it printed shows
  # with --verbosity (on this project's CPU machines: the oneDNN and cuda lines).
  noticed = [line for line in verbose.splitlines() if console.is_notice(line)]
  assert noticed or "cuda" not in verbose.lower()
