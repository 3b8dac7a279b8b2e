"""The console progress line: epoch, bar, step, running loss terms, speed and ETA."""

import io
import re

import pytest

from tfreid.training.progress import ProgressBar, format_seconds


class FakeClock:
  """A clock the test advances by hand."""

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_format_seconds():
  assert format_seconds(0) == "0m00s"
  assert format_seconds(59.6) == "1m00s"
  assert format_seconds(3 * 3600 + 2 * 60 + 5) == "3h02m05s"
  assert format_seconds(-4) == "0m00s"


def _fake_run(stream, clock, total=12, per_epoch=4, log_every=3, start=0, first_step_s=30.0):
  """Steps start+1..total: the first takes `first_step_s` (compilation), the others 2 s;
  loss terms a = step, b = 10 * step."""
  bar = ProgressBar(total, per_epoch, start_step=start, log_every=log_every, stream=stream,
                    width=12, clock=clock)
  for step in range(start + 1, total + 1):
    clock.now += first_step_s if step == start + 1 else 2.0
    bar.update(step, {"a": float(step), "b": 10.0 * step})
  bar.close()
  return bar


def test_log_lines_every_n_steps_with_running_means_speed_and_eta():
  stream, clock = io.StringIO(), FakeClock()
  _fake_run(stream, clock)
  lines = stream.getvalue().splitlines()
  assert len(lines) == 4  # steps 3, 6, 9 and 12
  # Step 6: epoch 2 of 3, half the bar; a and b averaged over steps 4..6; the speed is
  # measured from step 1 on (5 steps in 10 s: 0.5 steps/s), leaving 6 steps: 12 s.
  assert lines[1] == ("epoch 2/3 [######......] step 6/12 a 5 b 50 0.5 steps/s ETA 0m12s")
  assert lines[0].startswith("epoch 1/3 [###.........] step 3/12 a 2 b 20 ")
  assert lines[0].endswith("0.5 steps/s ETA 0m18s")
  assert lines[3] == "epoch 3/3 [############] step 12/12 a 11 b 110 0.5 steps/s ETA 0m00s"


def test_first_line_has_no_eta_and_last_step_is_always_printed():
  stream, clock = io.StringIO(), FakeClock()
  _fake_run(stream, clock, total=5, per_epoch=5, log_every=1)
  lines = stream.getvalue().splitlines()
  assert len(lines) == 5
  assert lines[0].endswith("step 1/5 a 1 b 10 ETA --")
  stream, clock = io.StringIO(), FakeClock()
  _fake_run(stream, clock, total=5, per_epoch=5, log_every=3)
  assert [re.search(r"step (\d+)/", line).group(1)
          for line in stream.getvalue().splitlines()] == ["3", "5"]


def test_resumed_run_counts_from_its_start_step():
  stream, clock = io.StringIO(), FakeClock()
  _fake_run(stream, clock, total=12, per_epoch=4, log_every=3, start=7)
  lines = stream.getvalue().splitlines()
  # Steps 8..12 ran; lines at 9 and 12; at 9 the speed is 1 step in 2 s after step 8.
  assert lines[0] == "epoch 3/3 [#########...] step 9/12 a 8.5 b 85 0.5 steps/s ETA 0m06s"
  assert lines[1].startswith("epoch 3/3 [############] step 12/12 a 11 b 110")


def test_terminal_redraws_one_line_and_ends_it_on_close():
  stream, clock = Terminal(), FakeClock()
  _fake_run(stream, clock, total=4, per_epoch=2, log_every=10)
  out = stream.getvalue()
  assert out.count("\r") == 4 and out.count("\033[K") == 4 and out.endswith("\n")
  assert out.count("\n") == 1
  last = out.split("\r")[-1]
  assert last.startswith("epoch 2/2 [############] step 4/4 a 2.5 b 25 ")


def test_bad_arguments_are_errors():
  with pytest.raises(ValueError, match="log_every must be >= 1"):
    ProgressBar(10, 5, log_every=0)
