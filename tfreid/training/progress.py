"""A console progress line with ETA and the running loss terms.

    epoch 2/10 [####............] step 15/80 loss 3.412 triplet 0.541 ... 1.9 steps/s ETA 0m34s

The loss terms are running means over the last `log_every` steps. The speed (and with it the
ETA) is measured from the first step this run trained on, not counting that step: it includes
tracing and XLA compilation, which would make the early ETA much too long.
"""

import collections
import sys
import time


def format_seconds(seconds: float) -> str:
  """`1h02m03s`, or `2m03s` under an hour."""
  seconds = int(round(max(seconds, 0)))
  hours, rem = divmod(seconds, 3600)
  minutes, secs = divmod(rem, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class ProgressBar:
  """Prints `epoch e/E [####....] step s/S  <running loss terms>  <steps/s> ETA`.

  On a terminal the line is redrawn in place after every step; otherwise (CI, log files) one
  line is printed every `log_every` steps and at the last step.

  Args:
    total_steps: the step the run ends at.
    steps_per_epoch: steps of one epoch (for the epoch counter).
    start_step: the step the run starts from (a resumed run starts past 0).
    log_every: lines are printed (off a terminal) and loss terms averaged over this many steps.
    stream: where to write (default sys.stderr).
    width: characters of the bar.
    clock: a function returning seconds (tests pass a fake clock).
  """

  def __init__(self, total_steps: int, steps_per_epoch: int, start_step: int = 0,
               log_every: int = 10, stream=None, width: int = 24, clock=time.monotonic):
    if steps_per_epoch < 1 or log_every < 1:
      raise ValueError(f"steps_per_epoch and log_every must be >= 1, got {steps_per_epoch} "
                       f"and {log_every}.")
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch
    self.start_step = start_step
    self.log_every = log_every
    self.stream = stream or sys.stderr
    self.width = width
    self.clock = clock
    self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
    self._recent = collections.deque(maxlen=log_every)
    self._first = None  # (step, time) of the first update.
    self._written = False

  def running_means(self) -> dict:
    """Mean of each loss term over the last `log_every` updates that reported it."""
    sums, counts = {}, {}
    for values in self._recent:
      for k, v in values.items():
        sums[k] = sums.get(k, 0.0) + v
        counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}

  def steps_per_second(self, step: int, now: float) -> float | None:
    """Speed since the first update (None until a second update)."""
    if self._first is None:
      return None
    first_step, first_time = self._first
    if step <= first_step or now <= first_time:
      return None
    return (step - first_step) / (now - first_time)

  def line(self, step: int, now: float | None = None) -> str:
    """The progress line at `step` (after `update` has recorded the step's values)."""
    now = self.clock() if now is None else now
    frac = min(step / max(self.total_steps, 1), 1.0)
    filled = int(round(frac * self.width))
    epoch = (step - 1) // self.steps_per_epoch + 1 if step else 0
    epochs = -(-self.total_steps // self.steps_per_epoch)
    terms = " ".join(f"{k} {v:.4g}" for k, v in self.running_means().items())
    rate = self.steps_per_second(step, now)
    if rate:
      speed = f"{rate:.3g} steps/s ETA {format_seconds((self.total_steps - step) / rate)}"
    else:
      speed = "ETA --"
    return (f"epoch {epoch}/{epochs} [{'#' * filled}{'.' * (self.width - filled)}] "
            f"step {step}/{self.total_steps} {terms} {speed}")

  def update(self, step: int, values: dict) -> None:
    """Records the loss terms of `step` and prints the line when it is due."""
    now = self.clock()
    if self._first is None:
      self._first = (step, now)
    self._recent.append(dict(values))
    if self.interactive:
      self.stream.write("\r" + self.line(step, now) + "\033[K")
      self.stream.flush()
      self._written = True
    elif step % self.log_every == 0 or step == self.total_steps:
      self.stream.write(self.line(step, now) + "\n")
      self.stream.flush()

  def close(self) -> None:
    """Ends the redrawn line on a terminal."""
    if self.interactive and self._written:
      self.stream.write("\n")
      self.stream.flush()
      self._written = False
