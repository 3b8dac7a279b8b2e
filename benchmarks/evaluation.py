"""Evaluation speed at MARS scale: tfreid.metrics beside a per-query re-implementation of
torchreid's `eval_market1501`, plus k-reciprocal re-ranking time and memory.

    python benchmarks/evaluation.py              # MARS scale: 1980 queries, 9330 gallery
    python benchmarks/evaluation.py --scale=0.1  # quick run

Random 2048-d float32 features with a MARS-like structure: identities seen by 1-6 of 6
cameras with several tracklets per camera, one query per (identity, camera), the other
tracklets in the gallery, distractors (pid 0) filling the gallery; some queries therefore
have no cross-camera match, as 140 MARS queries do. Both evaluations run in the same
process on the same distance matrix; their CMC and mAP are compared. Prints the figures
and, as the last line, one JSON object.
"""

import json
import os
import resource
import sys
import time
import tracemalloc
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=wrong-import-position
from absl import app  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position

# pylint: disable-next=wrong-import-position
from tfreid.metrics import compute_distance_matrix, evaluate_rank, re_ranking, summarize

flags.DEFINE_float("scale", 1.0, "Fraction of the MARS test set size (1980 x 9330).")
flags.DEFINE_integer("dim", 2048, "Feature dimension.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_bool("rerank", True, "Also time k-reciprocal re-ranking.")
FLAGS = flags.FLAGS

MARS_QUERIES, MARS_GALLERY, MARS_IDS, NUM_CAMERAS = 1980, 9330, 626, 6
# Scale of the identity component of the features relative to unit per-tracklet noise.
ID_SIGNAL = 0.4


def make_dataset(scale: float, dim: int, seed: int):
  """MARS-like query/gallery pids, camids and features."""
  rng = np.random.default_rng(seed)
  num_q = max(4, round(MARS_QUERIES * scale))
  num_g = max(8, round(MARS_GALLERY * scale))
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

  # Identity signal + camera bias + per-tracklet noise (distractors: their own identity).
  centres = ID_SIGNAL * rng.standard_normal((num_ids + 1, dim)).astype(np.float32)
  cam_bias = 0.1 * rng.standard_normal((NUM_CAMERAS, dim)).astype(np.float32)

  def features(pids, cams):
    out = rng.standard_normal((pids.size, dim), dtype=np.float32)
    ids = np.where(pids == 0, rng.integers(1, num_ids + 1, pids.size), pids)
    out += np.where((pids == 0)[:, None], 0, centres[ids]) + cam_bias[cams]
    return out

  return (features(q_pids, q_cams), features(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams)


# ----------------------------------------- the per-query reference (torchreid's algorithm)


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


def timed(fn, *args, **kwargs):
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - start


def main(_):
  # Reported below as valid queries; the warning would only repeat it.
  warnings.filterwarnings("ignore", message=".*queries have no good match")
  query, gallery, q_pids, g_pids, q_cams, g_cams = make_dataset(FLAGS.scale, FLAGS.dim,
                                                               FLAGS.seed)
  print(f"queries {query.shape[0]}, gallery {gallery.shape[0]}, dim {FLAGS.dim}")
  figures = {"num_query": int(query.shape[0]), "num_gallery": int(gallery.shape[0]),
             "dim": FLAGS.dim}

  dist, t_dist = timed(compute_distance_matrix, query, gallery, "euclidean", dtype=np.float64)
  result, t_eval = timed(evaluate_rank, dist, q_pids, g_pids, q_cams, g_cams, 50, "torchreid")
  _, t_matlab = timed(evaluate_rank, dist, q_pids, g_pids, q_cams, g_cams, 50, "mars_matlab")
  _, t_ref_dist = timed(torchreid_distance, query, gallery)
  (ref_cmc, ref_map), t_ref_eval = timed(torchreid_eval_market1501, dist, q_pids, g_pids,
                                         q_cams, g_cams, 50)

  cmc_diff = float(np.abs(ref_cmc - result["cmc"]).max())
  map_diff = abs(float(ref_map) - result["mAP"])
  summary = summarize(result)
  print(f"tfreid:    distance {t_dist:.3f} s + CMC/mAP {t_eval:.3f} s = {t_dist + t_eval:.3f} s "
        f"(mars_matlab protocol {t_matlab:.3f} s)")
  print(f"reference: distance {t_ref_dist:.3f} s + CMC/mAP {t_ref_eval:.3f} s "
        f"= {t_ref_dist + t_ref_eval:.3f} s")
  print(f"speedup: CMC/mAP {t_ref_eval / t_eval:.1f}x, distance + CMC/mAP "
        f"{(t_ref_dist + t_ref_eval) / (t_dist + t_eval):.1f}x")
  print(f"rank-1 {summary['rank1']:.4f}  mAP {summary['mAP']:.4f}  valid queries "
        f"{result['num_valid_queries']}/{result['num_queries']}; max |CMC diff| {cmc_diff:.2e}, "
        f"|mAP diff| {map_diff:.2e} (reference CMC is accumulated in float32)")
  figures.update({
      "tfreid_distance_s": round(t_dist, 4), "tfreid_eval_s": round(t_eval, 4),
      "tfreid_mars_matlab_eval_s": round(t_matlab, 4),
      "reference_distance_s": round(t_ref_dist, 4), "reference_eval_s": round(t_ref_eval, 4),
      "speedup_eval": round(t_ref_eval / t_eval, 2),
      "speedup_distance_and_eval": round((t_ref_dist + t_ref_eval) / (t_dist + t_eval), 2),
      "rank1": summary["rank1"], "mAP": summary["mAP"],
      "num_valid_queries": result["num_valid_queries"],
      "max_cmc_diff": cmc_diff, "map_diff": map_diff,
      "same_results": bool(cmc_diff < 1e-6 and map_diff < 1e-9),
  })

  # Memory of distance + evaluation (separate, untimed pass under tracemalloc).
  del dist
  tracemalloc.start()
  evaluate_rank(compute_distance_matrix(query, gallery, "euclidean", dtype=np.float64),
                q_pids, g_pids, q_cams, g_cams)
  figures["tfreid_distance_eval_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
  tracemalloc.stop()

  if FLAGS.rerank:
    q_g = compute_distance_matrix(query, gallery)
    (q_q, g_g), t_pair = timed(lambda: (compute_distance_matrix(query, query),
                                        compute_distance_matrix(gallery, gallery)))
    inputs_mb = (q_g.nbytes + q_q.nbytes + g_g.nbytes) / 2**20
    tracemalloc.start()
    reranked, t_rerank = timed(re_ranking, q_g, q_q, g_g)
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    rr = summarize(evaluate_rank(reranked, q_pids, g_pids, q_cams, g_cams))
    print(f"re-ranking (k1=20, k2=6, lambda=0.3): {t_rerank:.2f} s (q-q and g-g distances "
          f"{t_pair:.2f} s); peak traced memory during re-ranking {peak_mb:.0f} MB beyond "
          f"its float32 inputs ({inputs_mb:.0f} MB); rank-1 {rr['rank1']:.4f} mAP "
          f"{rr['mAP']:.4f}")
    figures.update({"rerank_s": round(t_rerank, 3), "rerank_pair_distances_s": round(t_pair, 3),
                    "rerank_peak_mb": round(peak_mb, 1), "rerank_inputs_mb": round(inputs_mb, 1),
                    "rerank_rank1": rr["rank1"], "rerank_mAP": rr["mAP"]})

  figures["process_max_rss_mb"] = round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  print(f"process peak RSS {figures['process_max_rss_mb']:.0f} MB")
  print(json.dumps(figures))


if __name__ == "__main__":
  app.run(main)
