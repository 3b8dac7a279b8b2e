"""Converter throughput (frames/s) and peak memory, with and without optical flow.

    python benchmarks/convert.py [--num_tracklets=2000] [--work_dir=/tmp/tfreid_convert_bench]

Writes its own MARS-layout dataset of `--num_tracklets` small tracklets (4..12 frames of
256x128 JPEG: a gradient background with a simple figure that walks a few pixels per frame
and a little noise), plus a quarter-size copy, then converts them with
`data_pipelines.convert`, each run in a fresh child process whose memory (summed over the
child and its worker processes, sampled every 50 ms) is tracked:

| run | dataset | workers | flow |
| --- | --- | --- | --- |
| quarter | N/4 tracklets | 1 | no |
| full | N tracklets | 1 | no |
| full_2workers | N tracklets | 2 | no |
| flow | N/4 tracklets | 1 | DIS (fast) |
| flow_2workers | N/4 tracklets | 2 | DIS (fast) |

frames/s is measured around `convert.convert` (imports excluded); peak RSS should not grow
from the quarter to the full dataset. The last line is one JSON object.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=wrong-import-position

H, W = 256, 128


def _frame(rng, background, colour, x, t):
  import cv2  # pylint: disable=import-outside-toplevel
  img = background.copy()
  cx = int(x + 2 * t)
  cv2.circle(img, (cx, 50), 14, (200, 180, 160), -1)
  cv2.rectangle(img, (cx - 20, 66), (cx + 20, 160), colour, -1)
  leg = 8 if t % 2 else -8
  cv2.line(img, (cx - 8, 160), (cx - 8 + leg, 245), (40, 40, 60), 10)
  cv2.line(img, (cx + 8, 160), (cx + 8 - leg, 245), (40, 40, 60), 10)
  noise = rng.integers(-6, 7, img.shape, dtype=np.int16)
  return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def make_mars(root: str, num_tracklets: int, seed: int = 0) -> int:
  """Writes a MARS-layout dataset; returns its number of frames (skips an existing one)."""
  import cv2  # pylint: disable=import-outside-toplevel
  import scipy.io  # pylint: disable=import-outside-toplevel
  done = os.path.join(root, ".complete")
  if os.path.exists(done):
    with open(done) as f:
      return int(f.read())
  rng = np.random.default_rng(seed)
  num_ids = max(4, num_tracklets // 6)
  grad = np.linspace(60, 200, H, dtype=np.float32)[:, None, None]
  total = 0
  info = {"train": [], "test": []}
  names = {"train": [], "test": []}
  counters = {}
  for k in range(num_tracklets):
    pid = int(rng.integers(1, num_ids + 1))
    sub = "train" if pid <= num_ids // 2 else "test"
    if sub == "test" and k % 25 == 0:
      pid = -1 if k % 50 == 0 else 0
    cam = int(rng.integers(1, 7))
    track = counters[(pid, cam)] = counters.get((pid, cam), 0) + 1
    n = int(rng.integers(4, 13))
    tint = rng.integers(0, 80, 3).astype(np.float32)
    background = np.clip(grad + tint + np.zeros((H, W, 3), np.float32), 0, 255).astype(np.uint8)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    x = float(rng.uniform(40, 80))
    pid_s = "00-1" if pid == -1 else f"{pid:04d}"
    folder = os.path.join(root, f"bbox_{sub}", pid_s)
    os.makedirs(folder, exist_ok=True)
    start = len(names[sub]) + 1
    for t in range(n):
      name = f"{pid_s}C{cam}T{track:04d}F{t + 1:03d}.jpg"
      cv2.imwrite(os.path.join(folder, name), _frame(rng, background, colour, x, t),
                  [cv2.IMWRITE_JPEG_QUALITY, 90])
      names[sub].append(name)
    info[sub].append([start, len(names[sub]), pid, cam])
    total += n
  os.makedirs(os.path.join(root, "info"), exist_ok=True)
  for sub, var in (("train", "track_train_info"), ("test", "track_test_info")):
    with open(os.path.join(root, "info", f"{sub}_name.txt"), "w", newline="") as f:
      f.write("".join(n + "\r\n" for n in names[sub]))
    scipy.io.savemat(os.path.join(root, "info", f"tracks_{sub}_info.mat"),
                     {var: np.asarray(info[sub], np.int32).reshape(-1, 4)})
  seen, query = set(), []
  for row, (_, _, pid, _) in enumerate(info["test"]):
    if pid > 0 and pid not in seen:
      seen.add(pid)
      query.append(row + 1)
  scipy.io.savemat(os.path.join(root, "info", "query_IDX.mat"),
                   {"query_IDX": np.asarray([query], np.int32)})
  with open(done, "w") as f:
    f.write(str(total))
  return total


def _tree_rss_kb(root_pid: int) -> int:
  """Resident memory (kB) of a process and all its descendants, from /proc."""
  parent = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
        parent[int(entry)] = int(fields[1])
      except (OSError, IndexError, ValueError):
        pass
  members, frontier = {root_pid}, [root_pid]
  while frontier:
    p = frontier.pop()
    for child, ppid in parent.items():
      if ppid == p and child not in members:
        members.add(child)
        frontier.append(child)
  total = 0
  for p in members:
    try:
      with open(f"/proc/{p}/status") as f:
        for line in f:
          if line.startswith("VmRSS:"):
            total += int(line.split()[1])
    except OSError:
      pass
  return total


def run_child(args: dict) -> dict:
  """Runs one conversion in a fresh process; returns its timing plus peak tree RSS."""
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child",
                           json.dumps(args)], stdout=subprocess.PIPE, text=True)
  peak = 0
  while proc.poll() is None:
    peak = max(peak, _tree_rss_kb(proc.pid))
    time.sleep(0.05)
  out = proc.stdout.read()
  if proc.returncode:
    raise RuntimeError(f"conversion child failed ({proc.returncode}): {out}")
  result = json.loads(out.strip().splitlines()[-1])
  result["peak_rss_mb"] = round(peak / 1024, 1)
  return result


def child(args: dict) -> None:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel,unused-import
  import cv2  # pylint: disable=import-outside-toplevel,unused-import
  from data_pipelines import convert  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  manifest = convert.convert("mars", args["src"], args["dst"], num_workers=args["workers"],
                             optical_flow=args["flow"], overwrite=True, progress=False)
  seconds = time.perf_counter() - start
  frames = manifest["num_frames"]
  print(json.dumps({"frames": frames, "seconds": round(seconds, 2),
                    "frames_per_s": round(frames / seconds, 1),
                    "shard_mb": round(sum(s["bytes"] for s in manifest["shards"]) / 2**20, 1)}))


def main():
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_tracklets", type=int, default=2000)
  parser.add_argument("--work_dir", default="/tmp/tfreid_convert_bench")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(json.loads(args.child))
    return
  full = os.path.join(args.work_dir, f"mars_{args.num_tracklets}")
  quarter = os.path.join(args.work_dir, f"mars_{args.num_tracklets // 4}")
  start = time.perf_counter()
  frames_full = make_mars(full, args.num_tracklets, seed=0)
  frames_quarter = make_mars(quarter, args.num_tracklets // 4, seed=1)
  print(f"datasets: {args.num_tracklets} tracklets / {frames_full} frames and "
        f"{args.num_tracklets // 4} / {frames_quarter} frames "
        f"({time.perf_counter() - start:.0f} s to write)", flush=True)
  runs = {}
  for name, src, workers, flow in (("quarter", quarter, 1, False), ("full", full, 1, False),
                                   ("full_2workers", full, 2, False),
                                   ("flow", quarter, 1, True),
                                   ("flow_2workers", quarter, 2, True)):
    dst = os.path.join(args.work_dir, f"out_{name}")
    runs[name] = run_child({"src": src, "dst": dst, "workers": workers, "flow": flow})
    r = runs[name]
    print(f"{name:>14}: {r['frames']} frames in {r['seconds']} s = {r['frames_per_s']} "
          f"frames/s, peak RSS {r['peak_rss_mb']} MB (all processes), shards "
          f"{r['shard_mb']} MB", flush=True)
  summary = {"num_tracklets": args.num_tracklets, "frames": frames_full,
             "frames_per_s": runs["full"]["frames_per_s"],
             "frames_per_s_2workers": runs["full_2workers"]["frames_per_s"],
             "flow_frames_per_s": runs["flow"]["frames_per_s"],
             "flow_frames_per_s_2workers": runs["flow_2workers"]["frames_per_s"],
             "peak_rss_mb": runs["full"]["peak_rss_mb"],
             "peak_rss_mb_quarter": runs["quarter"]["peak_rss_mb"],
             "peak_rss_mb_2workers": runs["full_2workers"]["peak_rss_mb"],
             "peak_rss_mb_flow": runs["flow"]["peak_rss_mb"],
             "cpu_count": os.cpu_count()}
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
