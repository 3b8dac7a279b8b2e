"""Evaluation speed at MARS scale: tfreid.metrics beside the peers' compiled evaluator.

    python benchmarks/evaluation.py              # MARS scale: 1,980 queries, 9,330 / 12,180 gallery
    python benchmarks/evaluation.py --scale=0.1  # quick run
    python benchmarks/evaluation.py --gallery_scale=10 --end_to_end_only   # a 10x gallery

The peer is the Cython evaluator torchreid and fast-reid compile and use by default
(`rank_cy.pyx`, `evaluate_cy`; fast-reid's copy is torchreid's algorithm). The benchmark
fetches fast-reid's package with `pip download --no-deps fastreid==VERSION` into a temporary
folder (or takes `--peer_package=FILE`, a wheel or sdist), compiles its `rank_cy.pyx` there
with Cython and setuptools (`pip install cython`), imports it from there and deletes the
folder at exit: nothing of the peer is kept. When it cannot be fetched or built, it says why
and runs the other rows. Rows:

1. end to end as `tfreid.evaluate` does it: features -> euclidean distances (float32 matrix,
   float64 tiles) -> CMC/mAP, under both protocols, timed, with the peak RSS while it runs
   (Linux: the peak is reset first) and the peak traced memory beyond the features;
2. `torchreid` protocol, Q x 9,330: `evaluate_rank` (1 thread and the default threads) beside
   the compiled `evaluate_cy`, alternated over `--rounds` rounds on the same float32 matrix;
   CMC and mAP compared;
3. `mars_matlab` protocol, Q x 12,180 (every test tracklet: gallery, queries and junk):
   `evaluate_rank` beside `evaluate_cy` timed on the same matrix (which applies the
   torchreid rules to it: the peers have no MATLAB protocol; its results are compared with
   ours under the torchreid rules), and the CMC/mAP compared with a per-query loop of the
   MATLAB rules (evaluation_mars.m, compute_AP.m);
4. a per-query Python loop of torchreid's `eval_market1501` (its fallback when the Cython
   module is missing), once;
5. k-reciprocal re-ranking: `tfreid.metrics.re_ranking` beside fast-reid's `re_ranking`
   (numpy, loaded from the same package), final distances and mAP compared.

Ratios are medians of per-round ratios measured in this run. Random 2048-d float32 features
with a MARS-like structure: identities seen by 1-6 of 6 cameras with several tracklets per
camera, one query per (identity, camera), the other tracklets in the gallery, distractors
(pid 0) filling the gallery, junk tracklets (pid -1) in the MATLAB gallery; some queries
have no cross-camera match, as 140 MARS queries do. Prints the figures and, as the last
line, one JSON object.
"""

import contextlib
import glob
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import tracemalloc
import warnings
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=wrong-import-position
from absl import app  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position

# pylint: disable-next=wrong-import-position
from tfreid.metrics import compute_distance_matrix, evaluate_rank, re_ranking, summarize

flags.DEFINE_float("scale", 1.0, "Fraction of the MARS test set size (1980 x 9330).")
flags.DEFINE_float("gallery_scale", 1.0, "Extra factor on the gallery size only (more "
                   "distractors), for the largest Q x G an evaluation is run at.")
flags.DEFINE_integer("dim", 2048, "Feature dimension.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("threads", None, "evaluate_rank's num_threads in the threaded rows "
                     "(default: as evaluate_rank's default, the CPUs of this process, at most 4).")
flags.DEFINE_integer("rounds", 5, "Alternated timing rounds of tfreid and the compiled peer.")
flags.DEFINE_bool("peer", True, "Fetch, build and time the peers' compiled evaluator.")
flags.DEFINE_string("peer_version", "1.4.0", "fast-reid version fetched from the registry.")
flags.DEFINE_string("peer_package", None, "A fast-reid wheel or sdist to use instead of "
                    "fetching one.")
flags.DEFINE_bool("python_loop", True, "Also time the per-query Python loop (torchreid's "
                  "fallback; about 30 s at MARS scale).")
flags.DEFINE_bool("matlab_loop", True, "Check mars_matlab against a per-query loop of the "
                  "MATLAB rules.")
flags.DEFINE_bool("rerank", True, "Also time k-reciprocal re-ranking (and fast-reid's).")
flags.DEFINE_bool("end_to_end_only", False, "Only the end-to-end rows (features -> "
                  "distances -> metrics), e.g. for a large --gallery_scale.")
FLAGS = flags.FLAGS

MARS_QUERIES, MARS_GALLERY, MARS_JUNK, MARS_IDS, NUM_CAMERAS = 1980, 9330, 870, 626, 6
# Scale of the identity component of the features relative to unit per-tracklet noise.
ID_SIGNAL = 0.4


def make_dataset(scale: float, dim: int, seed: int, gallery_scale: float = 1.0) -> dict:
  """MARS-like query, gallery and junk (pid -1) features with their pids and camids."""
  rng = np.random.default_rng(seed)
  num_q = max(4, round(MARS_QUERIES * scale))
  num_g = max(8, round(MARS_GALLERY * scale * gallery_scale))
  num_junk = max(2, round(MARS_JUNK * scale))
  num_ids = max(2, round(MARS_IDS * scale))
  q_pids, q_cams, g_pids, g_cams = [], [], [], []
  pid = 0
  while pid < num_ids or len(q_pids) < num_q:  # more identities if the queries fall short
    pid += 1
    num_cams = rng.choice(np.arange(1, NUM_CAMERAS + 1), p=[.08, .25, .3, .2, .12, .05])
    for cam in rng.choice(NUM_CAMERAS, num_cams, replace=False):
      count = 1 + rng.poisson(4.0)
      q_pids.append(pid)
      q_cams.append(cam)
      g_pids += [pid] * (count - 1)
      g_cams += [cam] * (count - 1)
  num_ids = pid
  q_pids, q_cams = np.array(q_pids), np.array(q_cams)
  keep = np.sort(rng.permutation(q_pids.size)[:num_q])
  q_pids, q_cams = q_pids[keep], q_cams[keep]
  g_pids, g_cams = np.array(g_pids), np.array(g_cams)
  if g_pids.size > num_g:
    keep = np.sort(rng.permutation(g_pids.size)[:num_g])
    g_pids, g_cams = g_pids[keep], g_cams[keep]
  extra = num_g - g_pids.size
  g_pids = np.concatenate([g_pids, np.zeros(extra, np.int64)])
  g_cams = np.concatenate([g_cams, rng.integers(0, NUM_CAMERAS, extra)])
  shuffle = rng.permutation(g_pids.size)
  g_pids, g_cams = g_pids[shuffle], g_cams[shuffle]
  j_pids = np.full(num_junk, -1)
  j_cams = rng.integers(0, NUM_CAMERAS, num_junk)

  # Identity signal + camera bias + per-tracklet noise (distractors: their own identity;
  # junk: no identity, twice the noise, like badly detected boxes).
  centres = ID_SIGNAL * rng.standard_normal((num_ids + 1, dim)).astype(np.float32)
  cam_bias = 0.1 * rng.standard_normal((NUM_CAMERAS, dim)).astype(np.float32)

  def features(pids, cams):
    out = rng.standard_normal((pids.size, dim), dtype=np.float32)
    ids = np.where(pids <= 0, rng.integers(1, num_ids + 1, pids.size), pids)
    out *= np.where(pids < 0, 2.0, 1.0).astype(np.float32)[:, None]
    out += np.where((pids <= 0)[:, None], 0, centres[ids]) + cam_bias[cams]
    return out

  data = {"query": features(q_pids, q_cams), "gallery": features(g_pids, g_cams),
          "junk": features(j_pids, j_cams), "q_pids": q_pids, "q_cams": q_cams,
          "g_pids": g_pids, "g_cams": g_cams, "j_pids": j_pids, "j_cams": j_cams}
  # The MATLAB protocol's gallery: every test tracklet (gallery, queries, junk), mixed.
  order = rng.permutation(num_g + num_q + num_junk)
  data["all_index"] = order
  data["all_pids"] = np.concatenate([g_pids, q_pids, j_pids])[order]
  data["all_cams"] = np.concatenate([g_cams, q_cams, j_cams])[order]
  return data


def all_test_features(data: dict) -> np.ndarray:
  return np.concatenate([data["gallery"], data["query"], data["junk"]])[data["all_index"]]


# ------------------------------------------------------------------ the compiled peer


_BUILD = """
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
setup(ext_modules=cythonize([Extension("rank_cy", ["rank_cy.pyx"],
                                       include_dirs=[numpy.get_include()])], quiet=True),
      script_args=["build_ext", "--inplace", "-q"])
"""


def _last_lines(text: str, count: int = 3) -> str:
  lines = [line for line in text.strip().splitlines() if line.strip()]
  return " | ".join(lines[-count:]) or "(no output)"


def _extract(package: str, suffixes: dict, folder: str) -> dict:
  """Writes the first member of a wheel/zip/sdist whose path ends with each suffix to folder;
  returns {key: path}."""
  contents = {}
  if package.endswith((".whl", ".zip")):
    with zipfile.ZipFile(package) as archive:
      for key, suffix in suffixes.items():
        names = [name for name in archive.namelist() if name.endswith(suffix)]
        if names:
          contents[key] = archive.read(names[0])
  else:
    with tarfile.open(package) as archive:
      for key, suffix in suffixes.items():
        members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(suffix)]
        if members:
          contents[key] = archive.extractfile(members[0]).read()
  found = {}
  for key, data in contents.items():
    found[key] = os.path.join(folder, os.path.basename(suffixes[key]))
    with open(found[key], "wb") as out:
      out.write(data)
  return found


def build_peer(folder: str) -> dict:
  """{"evaluate_cy", "re_ranking" (or None), "what"} or {"reason"} when it cannot be built."""
  package = FLAGS.peer_package
  if package is None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", folder, f"fastreid=={FLAGS.peer_version}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    packages = glob.glob(os.path.join(folder, "fastreid-*"))
    if done.returncode or not packages:
      return {"reason": f"`pip download fastreid=={FLAGS.peer_version}` failed: "
                        f"{_last_lines(done.stderr + done.stdout)}"}
    package = packages[0]
  files = _extract(package, {"pyx": "evaluation/rank_cylib/rank_cy.pyx",
                             "rerank": "evaluation/rerank.py"}, folder)
  if "pyx" not in files:
    return {"reason": f"{os.path.basename(package)} holds no evaluation/rank_cylib/rank_cy.pyx"}
  try:
    import Cython  # pylint: disable=import-outside-toplevel
  except ImportError:
    return {"reason": "Cython is not installed (`pip install cython` in this environment "
                      "builds the peer)"}
  done = subprocess.run([sys.executable, "-c", _BUILD], cwd=folder, capture_output=True,
                        text=True, check=False)
  built = glob.glob(os.path.join(folder, "rank_cy*.so")) + glob.glob(
      os.path.join(folder, "rank_cy*.pyd"))
  if done.returncode or not built:
    return {"reason": f"compiling rank_cy.pyx failed: {_last_lines(done.stderr + done.stdout)}"}
  spec = importlib.util.spec_from_file_location("rank_cy", built[0])
  rank_cy = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(rank_cy)
  peer = {"evaluate_cy": rank_cy.evaluate_cy, "re_ranking": None,
          "what": f"{os.path.basename(package)}: rank_cy.pyx compiled with Cython "
                  f"{Cython.__version__} ({sysconfig.get_config_var('CC') or 'cc'} "
                  f"{sysconfig.get_config_var('OPT') or ''})".replace("  ", " ")}
  if "rerank" in files:
    spec = importlib.util.spec_from_file_location("fastreid_rerank", files["rerank"])
    rerank = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rerank)
    peer["re_ranking"] = rerank.re_ranking
  return peer


def peer_evaluate(evaluate_cy, dist, q_pids, g_pids, q_cams, g_cams, max_rank=50):
  """The peer's CMC (float32) and mAP (mean of its float32 per-query APs)."""
  with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
    cmc, all_ap, _ = evaluate_cy(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
  return np.asarray(cmc), float(np.mean(np.asarray(all_ap), dtype=np.float64))


# ------------------------------------------ per-query references (the peers' Python loop)


def torchreid_distance(query, gallery):
  """torchreid's default "euclidean" metric: squared distance, full matrix, float32."""
  return ((query ** 2).sum(1)[:, None] + (gallery ** 2).sum(1)[None, :]
          - 2 * query @ gallery.T)


def torchreid_eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
  """The per-query Python loop of torchreid's eval_market1501, re-written step by step."""
  num_q, num_g = distmat.shape
  if num_g < max_rank:
    max_rank = num_g
  indices = np.argsort(distmat, axis=1)
  matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
  all_cmc, all_ap, num_valid = [], [], 0.
  for q_idx in range(num_q):
    order = indices[q_idx]
    remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
    raw_cmc = matches[q_idx][np.invert(remove)]
    if not np.any(raw_cmc):
      continue
    cmc = raw_cmc.cumsum()
    cmc[cmc > 1] = 1
    all_cmc.append(cmc[:max_rank])
    num_valid += 1.
    num_rel = raw_cmc.sum()
    precision = [x / (i + 1.) for i, x in enumerate(raw_cmc.cumsum())]
    all_ap.append((np.asarray(precision) * raw_cmc).sum() / num_rel)
  all_cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid
  return all_cmc, np.mean(all_ap)


def matlab_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
  """Per query, the MATLAB code's steps (evaluation_mars.m, compute_AP.m): stable sort, junk
  = pid -1 and same pid and camera, trapezoid AP over the non-junk positions."""
  num_q = distmat.shape[0]
  max_rank = min(max_rank, distmat.shape[1])
  cmc_sum, ap_sum = np.zeros(max_rank), 0.0
  for i in range(num_q):
    order = np.argsort(distmat[i], kind="stable")
    pids, cams = g_pids[order], g_camids[order]
    junk = (pids == -1) | ((pids == q_pids[i]) & (cams == q_camids[i]))
    good = ((pids == q_pids[i]) & ~junk)[~junk]
    if not good.any():
      continue
    hits = np.cumsum(good)
    position = np.arange(1, good.size + 1)
    recall, precision = hits / hits[-1], hits / position
    old_recall = np.r_[0.0, recall[:-1]]
    old_precision = np.r_[1.0, precision[:-1]]
    ap_sum += float(np.sum((recall - old_recall) * (old_precision + precision) / 2))
    cmc_sum[np.argmax(good):] += 1
  return cmc_sum / num_q, ap_sum / num_q


def tied_matches(dist, q_pids, g_pids, q_cams, g_cams) -> list:
  """(row, column) of the true matches (same pid, other camera) whose distance equals that of
  another item of their row: their rank depends on the order given to ties."""
  found = []
  for i in range(dist.shape[0]):
    row = dist[i]
    for j in np.flatnonzero((g_pids == q_pids[i]) & (g_cams != q_cams[i])):
      if np.count_nonzero(row == row[j]) > 1:
        found.append((i, int(j)))
  return found


def separate_ties(dist, tied) -> np.ndarray:
  """A copy of dist where each of the `tied` true matches is moved up one float step at a
  time until no other item of its row has its distance: every tie order then ranks alike."""
  out = dist.copy()
  up = out.dtype.type(np.inf)
  for i, j in tied:
    while np.count_nonzero(out[i] == out[i, j]) > 1:
      out[i, j] = np.nextafter(out[i, j], up)
  return out


# ------------------------------------------------------------------------------ timing


def timed(fn, *args, **kwargs):
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - start


def dist_mb(query, gallery) -> float:
  """Size of the float32 query x gallery matrix."""
  return query.shape[0] * gallery.shape[0] * 4 / 2**20


def max_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(field: str):
  """A memory field of /proc/self/status in MB (Linux), else None."""
  try:
    with open("/proc/self/status", encoding="ascii") as status:
      for line in status:
        if line.startswith(field + ":"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


def measure_peak_rss(fn):
  """(fn(), RSS at the start in MB, peak RSS while it ran in MB). Linux resets the peak
  (VmHWM) through /proc/self/clear_refs; elsewhere the process's peak so far is returned."""
  try:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
      clear.write("5")
    start = _status_mb("VmRSS")
  except OSError:
    start = None
  out = fn()
  peak = _status_mb("VmHWM") if start is not None else None
  return out, start, peak if peak is not None else max_rss_mb()


def alternate(contenders: dict, rounds: int) -> dict:
  """Runs every contender once per round, rotating the order; {name: [seconds]}."""
  names = list(contenders)
  times = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      times[name].append(timed(contenders[name])[1])
  return times


def ratio(times: dict, slow: str, fast: str) -> float:
  return statistics.median(s / f for s, f in zip(times[slow], times[fast]))


def differences(cmc_a, map_a, cmc_b, map_b) -> dict:
  return {"max_cmc_diff": float(np.abs(np.asarray(cmc_a) - np.asarray(cmc_b)).max()),
          "map_diff": abs(float(map_a) - float(map_b))}


def same(diff: dict) -> bool:
  return diff["max_cmc_diff"] <= 1e-6 and diff["map_diff"] <= 1e-6


# -------------------------------------------------------------------------------- main


def main(_):
  # Reported below as valid queries; the warning would only repeat it.
  warnings.filterwarnings("ignore", message=".*queries have no good match")
  data = make_dataset(FLAGS.scale, FLAGS.dim, FLAGS.seed, FLAGS.gallery_scale)
  query, gallery = data["query"], data["gallery"]
  q_pids, q_cams, g_pids, g_cams = data["q_pids"], data["q_cams"], data["g_pids"], data["g_cams"]
  all_pids, all_cams = data["all_pids"], data["all_cams"]
  everything = all_test_features(data)
  threads = FLAGS.threads or min(4, len(os.sched_getaffinity(0)))
  figures = {"num_query": int(query.shape[0]), "num_gallery": int(gallery.shape[0]),
             "num_gallery_mars_matlab": int(everything.shape[0]), "dim": FLAGS.dim,
             "threads": threads}
  print(f"queries {query.shape[0]}, gallery {gallery.shape[0]} (torchreid) / "
        f"{everything.shape[0]} (mars_matlab: every test tracklet), dim {FLAGS.dim}; "
        f"threaded rows: {threads} threads")

  # 1. End to end, as tfreid.evaluate: euclidean distances (float32 matrix, float64 tiles).
  def end_to_end(gallery_features, gallery_pids, gallery_cams, protocol):
    dist, t_dist = timed(compute_distance_matrix, query, gallery_features)
    result, t_eval = timed(evaluate_rank, dist, q_pids, gallery_pids, q_cams, gallery_cams, 50,
                           protocol)
    return dist, result, t_dist, t_eval

  (dist, result, t_dist, t_eval), rss_start, rss_peak = measure_peak_rss(
      lambda: end_to_end(gallery, g_pids, g_cams, "torchreid"))
  if FLAGS.end_to_end_only:
    del dist
  (dist_all, result_m, t_dist_all, t_eval_m), rss_start_m, rss_peak_m = measure_peak_rss(
      lambda: end_to_end(everything, all_pids, all_cams, "mars_matlab"))
  if FLAGS.end_to_end_only:
    del dist_all
  tracemalloc.start()
  evaluate_rank(compute_distance_matrix(query, gallery), q_pids, g_pids, q_cams, g_cams)
  traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
  tracemalloc.stop()
  summary, summary_m = summarize(result), summarize(result_m)
  features_mb = (query.nbytes + gallery.nbytes + everything.nbytes) / 2**20
  print(f"end to end, torchreid   ({query.shape[0]} x {gallery.shape[0]}): distances "
        f"{t_dist:.3f} s + CMC/mAP {t_eval:.3f} s = {t_dist + t_eval:.3f} s, peak RSS "
        f"{rss_peak:.0f} MB; rank-1 {summary['rank1']:.4f} mAP {summary['mAP']:.4f} over "
        f"{result['num_valid_queries']} valid queries")
  print(f"end to end, mars_matlab ({query.shape[0]} x {everything.shape[0]}): distances "
        f"{t_dist_all:.3f} s + CMC/mAP {t_eval_m:.3f} s = {t_dist_all + t_eval_m:.3f} s, peak "
        f"RSS {rss_peak_m:.0f} MB; rank-1 {summary_m['rank1']:.4f} mAP {summary_m['mAP']:.4f}")
  start_text = "" if rss_start is None else f" from {rss_start:.0f} MB at the start"
  print(f"memory: peak RSS of the torchreid run {rss_peak:.0f} MB{start_text} (features "
        f"{features_mb:.0f} MB, the float32 matrix {dist_mb(query, gallery):.0f} MB); peak "
        f"traced memory of its distances + CMC/mAP {traced_mb:.0f} MB (the matrix included)")
  figures.update({
      "e2e_torchreid_distance_s": round(t_dist, 4), "e2e_torchreid_eval_s": round(t_eval, 4),
      "e2e_torchreid_s": round(t_dist + t_eval, 4),
      "e2e_mars_matlab_distance_s": round(t_dist_all, 4),
      "e2e_mars_matlab_eval_s": round(t_eval_m, 4),
      "e2e_mars_matlab_s": round(t_dist_all + t_eval_m, 4),
      "e2e_torchreid_rss_start_mb": rss_start and round(rss_start, 1),
      "e2e_torchreid_peak_rss_mb": round(rss_peak, 1),
      "e2e_mars_matlab_rss_start_mb": rss_start_m and round(rss_start_m, 1),
      "e2e_mars_matlab_peak_rss_mb": round(rss_peak_m, 1),
      "e2e_traced_peak_mb": round(traced_mb, 1), "features_mb": round(features_mb, 1),
      "rank1": summary["rank1"], "mAP": summary["mAP"],
      "num_valid_queries": result["num_valid_queries"],
      "mars_matlab_rank1": summary_m["rank1"], "mars_matlab_mAP": summary_m["mAP"]})
  if FLAGS.end_to_end_only:
    print(json.dumps(figures))
    return

  with tempfile.TemporaryDirectory(prefix="tfreid_peer_") as folder:
    peer = build_peer(folder) if FLAGS.peer else {"reason": "--nopeer"}
  if "reason" in peer:
    print(f"compiled peer: NOT MEASURED, cannot build it: {peer['reason']}. The rows against "
          "it are skipped; the Python loop and the references below still run.")
    figures["peer"] = None
    figures["peer_unavailable"] = peer["reason"]
  else:
    print(f"compiled peer: fast-reid evaluate_cy from {peer['what']}, single-threaded")
    figures["peer"] = peer["what"]
  evaluate_cy = peer.get("evaluate_cy")

  # 2. torchreid protocol on the end-to-end matrix.
  tied = tied_matches(dist, q_pids, g_pids, q_cams, g_cams)
  untied = separate_ties(dist, tied)
  result_untied = evaluate_rank(untied, q_pids, g_pids, q_cams, g_cams, 50, "torchreid")
  contenders = {
      "tfreid_1": lambda: evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, 50, "torchreid",
                                        num_threads=1),
      "tfreid_n": lambda: evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, 50, "torchreid",
                                        num_threads=threads)}
  if evaluate_cy is not None:
    contenders["peer"] = lambda: peer_evaluate(evaluate_cy, dist, q_pids, g_pids, q_cams,
                                               g_cams)
  times = alternate(contenders, FLAGS.rounds)
  median = {name: statistics.median(values) for name, values in times.items()}
  print(f"torchreid protocol ({query.shape[0]} x {gallery.shape[0]}, float32, median of "
        f"{FLAGS.rounds} alternated rounds): tfreid {median['tfreid_1']:.3f} s (1 thread), "
        f"{median['tfreid_n']:.3f} s ({threads} threads)" + (
            "" if evaluate_cy is None else
            f"; compiled peer {median['peer']:.3f} s -> tfreid "
            f"{ratio(times, 'peer', 'tfreid_1'):.1f}x faster with 1 thread, "
            f"{ratio(times, 'peer', 'tfreid_n'):.1f}x with {threads}"))
  figures.update({"torchreid_tfreid_1thread_s": round(median["tfreid_1"], 4),
                  "torchreid_tfreid_threads_s": round(median["tfreid_n"], 4),
                  "tied_true_matches": len(tied)})
  if evaluate_cy is not None:
    raw = differences(*peer_evaluate(evaluate_cy, dist, q_pids, g_pids, q_cams, g_cams),
                      result["cmc"], result["mAP"])
    diff = differences(*peer_evaluate(evaluate_cy, untied, q_pids, g_pids, q_cams, g_cams),
                       result_untied["cmc"], result_untied["mAP"])
    print(f"  results: {len(tied)} true matches share their exact float32 distance with another "
          "item of their row; tfreid ranks ties by gallery index, the peers in the order of "
          "numpy's default argsort (not stable). On this matrix: max |CMC diff| "
          f"{raw['max_cmc_diff']:.1e}, |mAP diff| {raw['map_diff']:.1e}. With those matches "
          "moved up to the next free float32 value (every tie order then agrees): max |CMC "
          f"diff| {diff['max_cmc_diff']:.1e}, |mAP diff| {diff['map_diff']:.1e} "
          f"({'equal' if same(diff) else 'DIFFERENT'} to 1e-6)")
    figures.update({"torchreid_peer_s": round(median["peer"], 4),
                    "torchreid_speedup_1thread": round(ratio(times, "peer", "tfreid_1"), 2),
                    "torchreid_speedup_threads": round(ratio(times, "peer", "tfreid_n"), 2),
                    "torchreid_vs_peer_with_ties": raw, "torchreid_vs_peer": diff,
                    "torchreid_same_as_peer": same(diff)})

  # 3. mars_matlab protocol on every test tracklet.
  contenders = {
      "tfreid_1": lambda: evaluate_rank(dist_all, q_pids, all_pids, q_cams, all_cams, 50,
                                        "mars_matlab", num_threads=1),
      "tfreid_n": lambda: evaluate_rank(dist_all, q_pids, all_pids, q_cams, all_cams, 50,
                                        "mars_matlab", num_threads=threads)}
  if evaluate_cy is not None:
    contenders["peer"] = lambda: peer_evaluate(evaluate_cy, dist_all, q_pids, all_pids, q_cams,
                                               all_cams)
  times = alternate(contenders, FLAGS.rounds)
  median = {name: statistics.median(values) for name, values in times.items()}
  line = (f"mars_matlab protocol ({query.shape[0]} x {everything.shape[0]}): tfreid "
          f"{median['tfreid_1']:.3f} s (1 thread), {median['tfreid_n']:.3f} s ({threads} "
          "threads)")
  figures.update({"mars_matlab_tfreid_1thread_s": round(median["tfreid_1"], 4),
                  "mars_matlab_tfreid_threads_s": round(median["tfreid_n"], 4)})
  if evaluate_cy is not None:
    tied_all = tied_matches(dist_all, q_pids, all_pids, q_cams, all_cams)
    untied_all = separate_ties(dist_all, tied_all)
    theirs = peer_evaluate(evaluate_cy, untied_all, q_pids, all_pids, q_cams, all_cams)
    ours = evaluate_rank(untied_all, q_pids, all_pids, q_cams, all_cams, 50, "torchreid")
    diff = differences(*theirs, ours["cmc"], ours["mAP"])
    del untied_all
    line += (f"; compiled peer on the same matrix {median['peer']:.3f} s -> tfreid "
             f"{ratio(times, 'peer', 'tfreid_1'):.1f}x faster with 1 thread, "
             f"{ratio(times, 'peer', 'tfreid_n'):.1f}x with {threads} (the peer applies the "
             "torchreid rules; tfreid's torchreid rules on this matrix, its "
             f"{len(tied_all)} tied true matches separated as above: max |CMC diff| "
             f"{diff['max_cmc_diff']:.1e}, |mAP diff| {diff['map_diff']:.1e})")
    figures.update({"mars_matlab_peer_s": round(median["peer"], 4),
                    "mars_matlab_speedup_1thread": round(ratio(times, "peer", "tfreid_1"), 2),
                    "mars_matlab_speedup_threads": round(ratio(times, "peer", "tfreid_n"), 2),
                    "all_test_torchreid_rules_vs_peer": diff})
  print(line)
  if FLAGS.matlab_loop:
    (ref_cmc, ref_map), t_ref = timed(matlab_loop, dist_all, q_pids, all_pids, q_cams,
                                      all_cams, 50)
    diff = differences(ref_cmc, ref_map, result_m["cmc"], result_m["mAP"])
    print(f"  vs a per-query loop of the MATLAB rules ({t_ref:.1f} s): max |CMC diff| "
          f"{diff['max_cmc_diff']:.1e}, |mAP diff| {diff['map_diff']:.1e} "
          f"({'equal' if same(diff) else 'DIFFERENT'} to 1e-6)")
    figures.update({"mars_matlab_loop_s": round(t_ref, 3), "mars_matlab_vs_loop": diff,
                    "mars_matlab_same_as_loop": same(diff)})

  # 4. The peers' Python fallback.
  if FLAGS.python_loop:
    (ref_cmc, ref_map), t_loop = timed(torchreid_eval_market1501, untied, q_pids, g_pids,
                                       q_cams, g_cams, 50)
    _, t_ref_dist = timed(torchreid_distance, query, gallery)
    diff = differences(ref_cmc, ref_map, result_untied["cmc"], result_untied["mAP"])
    print(f"Python loop (torchreid's fallback, on the matrix with separated ties): {t_loop:.2f} "
          f"s -> tfreid {t_loop / figures['torchreid_tfreid_1thread_s']:.0f}x faster with 1 "
          f"thread; max |CMC diff| {diff['max_cmc_diff']:.1e}, |mAP diff| "
          f"{diff['map_diff']:.1e}; its full-matrix float32 distance {t_ref_dist:.3f} s "
          f"(tfreid's tiles: {t_dist:.3f} s)")
    figures.update({"python_loop_s": round(t_loop, 3), "python_loop_vs_tfreid": diff,
                    "torchreid_style_distance_s": round(t_ref_dist, 4)})
  del untied

  # 5. k-reciprocal re-ranking.
  if FLAGS.rerank:
    del dist_all
    (q_q, g_g), t_pair = timed(lambda: (compute_distance_matrix(query, query),
                                        compute_distance_matrix(gallery, gallery)))
    inputs_mb = (dist.nbytes + q_q.nbytes + g_g.nbytes) / 2**20
    reranked, t_rerank = timed(re_ranking, dist, q_q, g_g)
    rr = evaluate_rank(reranked, q_pids, g_pids, q_cams, g_cams)
    tracemalloc.start()
    re_ranking(dist, q_q, g_g)
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    line = (f"re-ranking (k1=20, k2=6, lambda=0.3): tfreid {t_rerank:.2f} s (q-q and g-g "
            f"distances {t_pair:.2f} s), peak traced memory {peak_mb:.0f} MB beyond its float32 "
            f"inputs ({inputs_mb:.0f} MB); rank-1 {summarize(rr)['rank1']:.4f} mAP "
            f"{rr['mAP']:.4f}")
    figures.update({"rerank_s": round(t_rerank, 3), "rerank_pair_distances_s": round(t_pair, 3),
                    "rerank_peak_mb": round(peak_mb, 1), "rerank_inputs_mb": round(inputs_mb, 1),
                    "rerank_rank1": summarize(rr)["rank1"], "rerank_mAP": rr["mAP"]})
    if peer.get("re_ranking") is not None:
      theirs, t_theirs = timed(peer["re_ranking"], dist, q_q, g_g)
      rr_theirs = evaluate_rank(theirs, q_pids, g_pids, q_cams, g_cams)
      diff = differences(rr_theirs["cmc"], rr_theirs["mAP"], rr["cmc"], rr["mAP"])
      max_dist_diff = float(np.abs(theirs - reranked).max())
      line += (f"; fast-reid's re_ranking {t_theirs:.2f} s -> {t_theirs / t_rerank:.1f}x; max "
               f"|distance diff| {max_dist_diff:.1e}, max |CMC diff| "
               f"{diff['max_cmc_diff']:.1e}, |mAP diff| {diff['map_diff']:.1e}")
      figures.update({"rerank_peer_s": round(t_theirs, 3),
                      "rerank_speedup": round(t_theirs / t_rerank, 2),
                      "rerank_max_distance_diff": max_dist_diff, "rerank_vs_peer": diff})
      del theirs
    print(line)

  figures["process_max_rss_mb"] = round(max_rss_mb(), 1)
  print(f"process peak RSS {figures['process_max_rss_mb']:.0f} MB")
  print(json.dumps(figures))


if __name__ == "__main__":
  app.run(main)
