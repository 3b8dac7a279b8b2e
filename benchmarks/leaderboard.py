"""All six methods side by side on the built-in synthetic dataset: `make leaderboard`.

Trains and evaluates every ``<method>:synthetic`` experiment on both synthetic presets
(``easy``; ``occluded``: occluders drifting across 60 % of the tracklets and badly cropped
frames) with 3 seeds, then writes, in ``--output_dir`` (default ``docs/leaderboard``):

* ``leaderboard.md`` and ``leaderboard.json``: per method and preset, rank-1 / rank-5 / mAP
  as mean ± sample standard deviation over the seeds, the training wall time of a run and
  its step time;
* ``leaderboard.png``: rank-1 and mAP bars with the standard deviation as error bars;
* ``attention_<method>.png`` for each method that draws attention: its attention on the same
  occluded query tracklet (the query whose first test clip has the most hidden joints),
  from the seed-0 run on the ``occluded`` preset (`python -m tfreid.visualize`).

Every run is an ordinary run directory, ``--runs_dir/<method>/<preset>/seed<k>`` (default
``runs/leaderboard``), trained with ``python -m tfreid.train`` and evaluated with ``python -m
tfreid.evaluate``, so the grid is resumable: a run with an ``eval/metrics.json`` is skipped,
a half-trained one resumes from its last checkpoint (the trainer's own resume), and the
tables are rebuilt from whatever has finished (``--report_only`` rebuilds them without
training). Each dataset (preset x the streams a method reads: optical flow for a3d) is
rendered and converted once, by the Makefile's ``data`` target, in the quickstart's
``runs/data`` folders.

Timing (in each run's ``leaderboard_timing.json``): ``train_seconds`` is the wall time of
the training commands (summed over resumptions: start-up and compilation included);
``step_ms`` is the median over the run's logged windows of global batch / clips per
second (the trainer's ``clips_per_second`` scalar: steady-state steps, no start-up).
The machine's load average at the start of each command is kept beside them, since a
loaded machine slows every figure.

    python benchmarks/leaderboard.py                       # the whole grid
    python benchmarks/leaderboard.py --methods=a3d,stal --seeds=0
    python benchmarks/leaderboard.py --report_only
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from tfreid import console  # pylint: disable=wrong-import-position
console.quiet_tensorflow_start()

METHODS = ("temporal_pooling", "nonlocal_i3d", "a3d", "stal", "siamese_convgru",
           "diversity_attention")
PRESETS = ("easy", "occluded")
SEEDS = (0, 1, 2)
BASELINE = "temporal_pooling"
METRICS = ("rank1", "rank5", "mAP")
TIMING_FILE = "leaderboard_timing.json"


def log(message: str) -> None:
  print(message, flush=True)


def stream_flags(method: str) -> list[str]:
  """The converter flags of the streams `method:synthetic` reads beyond the frames and the
  keypoints every synthetic dataset has (as the Makefile's quickstart computes them)."""
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  from tfreid.data import streams  # pylint: disable=import-outside-toplevel
  from tfreid.models import contract  # pylint: disable=import-outside-toplevel
  config = cfg.build_config(f"{method}:synthetic")
  flags = streams.converter_flags(contract.input_streams(config))
  return [f for f in flags if not f.startswith("--keypoints")]


def data_dir(preset: str, flags: list[str]) -> str:
  """The Makefile's DATA for PRESET and STREAM_FLAGS."""
  suffix = "".join(f.replace("--", "_") for f in flags)
  return os.path.join("runs", "data", f"synthetic_{preset}{suffix}")


def ensure_data(preset: str, flags: list[str], python: str) -> str:
  path = data_dir(preset, flags)
  if not os.path.exists(os.path.join(REPO, path, "manifest.json")):
    log(f"Rendering and converting the {preset} synthetic dataset "
        f"({' '.join(flags) or 'frames + keypoints'}) into {path}")
    subprocess.run(["make", "--no-print-directory", "data", f"PRESET={preset}",
                    f"STREAM_FLAGS={' '.join(flags)}", f"PY={python}"], cwd=REPO, check=True)
  return path


def run_dir(runs_dir: str, method: str, preset: str, seed: int) -> str:
  return os.path.join(runs_dir, method, preset, f"seed{seed}")


def read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json(path: str, content) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(content, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def logged_step_ms(model_dir: str, global_batch: int) -> float | None:
  """Median step time over the trainer's logged windows (global batch / clips per second)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  rates = []
  for path in sorted(glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == "clips_per_second":
          rates.append(float(tf.make_ndarray(value.tensor)))
  rates = [r for r in rates if r > 0]
  return 1000.0 * global_batch / statistics.median(rates) if rates else None


def train_and_evaluate(python: str, method: str, preset: str, seed: int, data: str,
                       model_dir: str, verbose: bool) -> dict:
  """Trains (or resumes) and evaluates one run; returns its record for the table."""
  os.makedirs(model_dir, exist_ok=True)
  timing_path = os.path.join(model_dir, TIMING_FILE)
  timing = read_json(timing_path) or {"train_seconds": 0.0, "train_commands": 0,
                                      "load_average": []}
  experiment = f"{method}:synthetic"
  train = [python, "-m", "tfreid.train", f"--experiment={experiment}", f"--data_dir={data}",
           f"--model_dir={model_dir}", f"--override=runtime.seed={seed}"]
  output = None if verbose else subprocess.DEVNULL
  timing["load_average"].append(round(os.getloadavg()[0], 2))
  start = time.time()
  proc = subprocess.run(train, cwd=REPO, stdout=output, stderr=subprocess.PIPE, text=True)
  timing["train_seconds"] += time.time() - start
  timing["train_commands"] += 1
  write_json(timing_path, timing)
  if proc.returncode != 0:
    raise RuntimeError(f"training {experiment} (seed {seed}, {preset}) failed with exit code "
                       f"{proc.returncode}:\n{proc.stderr[-3000:]}\nCommand: "
                       f"{shlex.join(train)}")
  start = time.time()
  evaluate = [python, "-m", "tfreid.evaluate", f"--model_dir={model_dir}"]
  proc = subprocess.run(evaluate, cwd=REPO, stdout=output, stderr=subprocess.PIPE, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"evaluating {model_dir} failed with exit code {proc.returncode}:\n"
                       f"{proc.stderr[-3000:]}")
  timing["eval_seconds"] = time.time() - start
  write_json(timing_path, timing)
  return collect(method, preset, seed, model_dir)


def collect(method: str, preset: str, seed: int, model_dir: str) -> dict | None:
  """The finished run's figures, or None when it has not finished."""
  metrics = read_json(os.path.join(model_dir, "eval", "metrics.json"))
  if metrics is None:
    return None
  timing = read_json(os.path.join(model_dir, TIMING_FILE)) or {}
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  config = cfg.load_config(os.path.join(model_dir, "config.yaml"))
  steps = int(metrics.get("checkpoint_step") or 0)
  return {"method": method, "preset": preset, "seed": seed,
          **{k: float(metrics[k]) for k in METRICS},
          "steps": steps, "train_seconds": timing.get("train_seconds"),
          "step_ms": logged_step_ms(model_dir, config.data.global_batch_size),
          "load_average": timing.get("load_average"),
          "global_batch": config.data.global_batch_size}


def mean_std(values: list[float]) -> tuple[float, float | None]:
  mean = sum(values) / len(values)
  std = statistics.stdev(values) if len(values) > 1 else None
  return mean, std


def summarise(records: list[dict]) -> list[dict]:
  """One row per (method, preset): mean ± sample std of each metric over the seeds."""
  rows = []
  for preset in PRESETS:
    for method in METHODS:
      runs = sorted((r for r in records if r["method"] == method and r["preset"] == preset),
                    key=lambda r: r["seed"])
      if not runs:
        continue
      row = {"method": method, "preset": preset, "seeds": [r["seed"] for r in runs]}
      for key in METRICS:
        row[key], row[f"{key}_std"] = mean_std([r[key] for r in runs])
      times = [r["train_seconds"] for r in runs if r["train_seconds"] is not None]
      steps = [r["step_ms"] for r in runs if r["step_ms"] is not None]
      row["train_seconds"] = sum(times) / len(times) if times else None
      row["step_ms"] = sum(steps) / len(steps) if steps else None
      row["steps"] = runs[0]["steps"]
      row["global_batch"] = runs[0]["global_batch"]
      rows.append(row)
  for row in rows:
    base = next((r for r in rows if r["method"] == BASELINE and r["preset"] == row["preset"]),
                None)
    row["vs_baseline"] = None if base is None or row["method"] == BASELINE else {
        k: row[k] - base[k] for k in METRICS}
  return rows


def _cell(mean: float, std: float | None) -> str:
  return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def markdown(rows: list[dict], header: dict) -> str:
  lines = [f"# Synthetic leaderboard", "",
           f"Measured {header['date']} on {header['machine']}; {header['note']}", "",
           "Mean ± sample standard deviation over the seeds (in %); the baseline is "
           "`temporal_pooling:synthetic` on the same preset. Train time: wall time of one "
           "run's training command (start-up and compilation included); step: steady-state "
           "time of one training step.", ""]
  for preset in PRESETS:
    chosen = [r for r in rows if r["preset"] == preset]
    if not chosen:
      continue
    lines += [f"## Preset `{preset}`", "",
              "| method | seeds | rank-1 | rank-5 | mAP | rank-1 / mAP vs baseline | steps | "
              "train time | step |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in chosen:
      vs = r["vs_baseline"]
      versus = "(baseline)" if r["method"] == BASELINE else (
          "—" if vs is None else f"{100 * vs['rank1']:+.1f} / {100 * vs['mAP']:+.1f}")
      train = "—" if r["train_seconds"] is None else f"{r['train_seconds'] / 60:.1f} min"
      step = "—" if r["step_ms"] is None else f"{r['step_ms']:.0f} ms"
      lines.append(f"| `{r['method']}` | {len(r['seeds'])} | "
                   f"{_cell(r['rank1'], r['rank1_std'])} | {_cell(r['rank5'], r['rank5_std'])} | "
                   f"{_cell(r['mAP'], r['mAP_std'])} | {versus} | {r['steps']} | {train} | "
                   f"{step} |")
    lines.append("")
  return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
  """Rank-1 and mAP bars per method, one panel per preset, sample std as error bars."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  presets = [p for p in PRESETS if any(r["preset"] == p for r in rows)]
  figure = Figure(figsize=(5.5 * max(1, len(presets)), 4.2))
  FigureCanvasAgg(figure)
  for i, preset in enumerate(presets):
    ax = figure.add_subplot(1, len(presets), i + 1)
    chosen = [r for r in rows if r["preset"] == preset]
    xs = list(range(len(chosen)))
    for offset, key, color in ((-0.2, "rank1", "#3b6fb6"), (0.2, "mAP", "#e08a2c")):
      ax.bar([x + offset for x in xs], [100 * r[key] for r in chosen], width=0.4,
             yerr=[100 * (r[f"{key}_std"] or 0.0) for r in chosen], capsize=3, color=color,
             label="rank-1" if key == "rank1" else "mAP")
    ax.set_xticks(xs)
    ax.set_xticklabels([r["method"].replace("_", "\n") for r in chosen], fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title(f"synthetic, {preset} preset")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=110)


def most_occluded_query(config) -> int:
  """The query tracklet whose first test clip has the largest share of hidden joints
  (visibility 0; ties: the first)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tfreid.data import pipeline  # pylint: disable=import-outside-toplevel
  best, best_share = 0, -1.0
  seen = set()
  for batch in pipeline.make_test_dataset(config, "query", streams=("clips", "keypoints")):
    index = batch["index"].numpy()
    hidden = (batch["keypoints"].numpy()[..., 2] <= 0).mean(axis=(1, 2))
    for position, share in zip(index, hidden):
      if position in seen:
        continue
      seen.add(position)
      if share > best_share:
        best, best_share = int(position), float(share)
  return best


def attention_pictures(python: str, runs_dir: str, output_dir: str) -> dict:
  """One picture per method that draws attention, on the same occluded query tracklet."""
  from tfreid import config as cfg  # pylint: disable=import-outside-toplevel
  reference = run_dir(runs_dir, BASELINE, "occluded", 0)
  if not os.path.exists(os.path.join(reference, "config.yaml")):
    return {}
  tracklet = most_occluded_query(cfg.load_config(os.path.join(reference, "config.yaml")))
  pictures = {}
  for method in METHODS:
    model_dir = run_dir(runs_dir, method, "occluded", 0)
    if method == BASELINE or collect(method, "occluded", 0, model_dir) is None:
      continue
    out = os.path.join(output_dir, f"attention_{method}.png")
    command = [python, "-m", "tfreid.visualize", f"--model_dir={model_dir}",
               f"--output={out}", f"--tracklet={tracklet}"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if proc.returncode == 0:
      pictures[method] = os.path.relpath(out, output_dir)
    else:
      log(f"{method}: no attention picture ({proc.stderr.strip().splitlines()[-1:]})")
  return {"tracklet": tracklet, "pictures": pictures}


def report(records: list[dict], output_dir: str, runs_dir: str, python: str,
           grid_seconds: float | None, draw_attention: bool) -> None:
  os.makedirs(output_dir, exist_ok=True)
  rows = summarise(records)
  load = [x for r in records for x in (r["load_average"] or [])]
  header = {
      "date": time.strftime("%Y-%m-%d"),
      "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
                 f"{platform.system()}",
      "note": (f"{len(records)} finished runs; load average at the start of a training "
               f"command {min(load):.1f}-{max(load):.1f}" if load else
               f"{len(records)} finished runs")}
  content = {"header": header, "rows": rows, "runs": records, "grid_seconds": grid_seconds,
             "total_train_seconds": sum(r["train_seconds"] or 0.0 for r in records)}
  if draw_attention:
    content["attention"] = attention_pictures(python, runs_dir, output_dir)
  write_json(os.path.join(output_dir, "leaderboard.json"), content)
  text = markdown(rows, header)
  total = content["total_train_seconds"]
  text += (f"\nTotal training time of the {len(records)} runs: {total / 3600:.2f} h"
           + (f"; this grid command ran {grid_seconds / 3600:.2f} h." if grid_seconds else
              ".") + "\n")
  attention = content.get("attention") or {}
  if attention.get("pictures"):
    text += (f"\n## Attention on occluded query tracklet {attention['tracklet']}\n\n"
             "Seed-0 runs on the `occluded` preset; top row: the frames, below: where the "
             "method looks (`python -m tfreid.visualize`).\n\n")
    for method, picture in sorted(attention["pictures"].items()):
      text += f"### `{method}`\n\n![{method}]({picture})\n\n"
  with open(os.path.join(output_dir, "leaderboard.md"), "w") as f:
    f.write(text)
  if rows:
    plot(rows, os.path.join(output_dir, "leaderboard.png"))
  log(text)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--presets", default=",".join(PRESETS))
  parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
  parser.add_argument("--runs_dir", default=os.path.join("runs", "leaderboard"))
  parser.add_argument("--output_dir", default=os.path.join("docs", "leaderboard"))
  parser.add_argument("--report_only", action="store_true",
                      help="Rebuild the tables from finished runs; train nothing.")
  parser.add_argument("--no_attention", action="store_true",
                      help="Do not draw the attention pictures.")
  parser.add_argument("--verbose", action="store_true", help="Show the runs' own output.")
  args = parser.parse_args(argv)
  methods = [m for m in args.methods.split(",") if m]
  presets = [p for p in args.presets.split(",") if p]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  bad = [m for m in methods if m not in METHODS] + [p for p in presets if p not in PRESETS]
  if bad:
    parser.error(f"unknown method or preset {bad}: methods {list(METHODS)}, presets "
                 f"{list(PRESETS)}.")
  os.chdir(REPO)
  python = sys.executable
  grid = [(m, p, s) for p in presets for m in methods for s in seeds]
  start = time.time()
  done_times = []
  if not args.report_only:
    for k, (method, preset, seed) in enumerate(grid, 1):
      model_dir = run_dir(args.runs_dir, method, preset, seed)
      prefix = f"[{k}/{len(grid)}] {method}:synthetic {preset} seed {seed}"
      if collect(method, preset, seed, model_dir) is not None:
        log(f"{prefix}: finished before, skipped")
        continue
      data = ensure_data(preset, stream_flags(method), python)
      remaining = len(grid) - k + 1
      eta = (f", about {statistics.mean(done_times) * remaining / 60:.0f} min left"
             if done_times else "")
      resumed = " (resuming)" if glob.glob(os.path.join(model_dir, "ckpt-*.index")) else ""
      log(f"{prefix}: training{resumed}{eta}")
      t0 = time.time()
      record = train_and_evaluate(python, method, preset, seed, data, model_dir, args.verbose)
      done_times.append(time.time() - t0)
      log(f"{prefix}: rank-1 {100 * record['rank1']:.1f}, mAP {100 * record['mAP']:.1f} "
          f"({done_times[-1] / 60:.1f} min; grid {(time.time() - start) / 60:.0f} min)")
  records = [r for r in (collect(m, p, s, run_dir(args.runs_dir, m, p, s))
                         for m in METHODS for p in PRESETS for s in SEEDS) if r is not None]
  grid_seconds = time.time() - start
  if args.report_only:  # the last grid command's time stays in the report
    previous = os.path.join(args.output_dir, "leaderboard.json")
    grid_seconds = None
    if os.path.exists(previous):
      with open(previous) as f:
        grid_seconds = json.load(f).get("grid_seconds")
  report(records, args.output_dir, args.runs_dir, python, grid_seconds,
         draw_attention=not args.no_attention)
  return 0


if __name__ == "__main__":
  sys.exit(main())
