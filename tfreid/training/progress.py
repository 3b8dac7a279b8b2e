"""A console progress line with ETA and running loss terms."""

import sys
import time


def format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rem = divmod(seconds, 3600)
  minutes, secs = divmod(rem, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class ProgressBar:
  """Prints `epoch e/E [####....] step s/S  loss ... ETA`.

  On a terminal the line is redrawn in place; otherwise (CI, log files) one line is printed
  every `log_every` steps.
  """

  def __init__(self, total_steps: int, steps_per_epoch: int, start_step: int = 0,
               log_every: int = 10, stream=None, width: int = 24):
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch
    self.start_step = start_step
    self.log_every = log_every
    self.stream = stream or sys.stderr
    self.width = width
    self.start_time = time.time()
    self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()

  def line(self, step: int, values: dict) -> str:
    done = step - self.start_step
    elapsed = time.time() - self.start_time
    rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
    eta = (self.total_steps - step) / rate if rate > 0 else 0.0
    frac = step / max(self.total_steps, 1)
    filled = int(round(frac * self.width))
    epoch = (step - 1) // self.steps_per_epoch + 1 if step else 0
    epochs = -(-self.total_steps // self.steps_per_epoch)
    terms = " ".join(f"{k} {v:.4g}" for k, v in values.items())
    return (f"epoch {epoch}/{epochs} [{'#' * filled}{'.' * (self.width - filled)}] "
            f"step {step}/{self.total_steps} {terms} ETA {format_seconds(eta)}")

  def update(self, step: int, values: dict) -> None:
    if self.interactive:
      self.stream.write("\r" + self.line(step, values) + "\033[K")
      self.stream.flush()
    elif step % self.log_every == 0 or step == self.total_steps:
      self.stream.write(self.line(step, values) + "\n")
      self.stream.flush()

  def close(self) -> None:
    if self.interactive:
      self.stream.write("\n")
      self.stream.flush()
