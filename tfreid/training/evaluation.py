"""Evaluation driver: dense test features -> distances -> CMC/mAP, and the reports.

Every clip of every query and gallery tracklet goes through the model (the dense test
pipeline, clips batched so a 900-frame tracklet never sits in one batch); clip outputs are
averaged per tracklet (torchreid's "dense" test); the distance is Euclidean (or the
experiment's `eval.distance`, or the model's own `pairwise_distance`); CMC and mAP follow
`eval.protocol` (`tfreid.metrics.evaluate_rank`).
"""

from __future__ import annotations

import json
import os

from absl import logging
import numpy as np
import tensorflow as tf

from tfreid import config as cfg
from tfreid import metrics
from tfreid.data import pipeline as data_pipeline
from tfreid.data import reader as data_reader
from tfreid.data import schema
from tfreid.metrics import report

SUMMARY_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP")


def resolve_protocol(config: cfg.ExperimentConfig, protocol: str | None = None
                     ) -> tuple[str, str]:
  """Returns (manifest protocol name, metric protocol) for the dataset.

  MARS has both `torchreid` and `mars_matlab` in its manifest; the closed-set datasets
  (iLIDS-VID, PRID-2011: query camera vs the other camera) and DukeMTMC-VideoReID have one,
  evaluated with the torchreid rules.
  """
  protocol = protocol or config.eval.protocol
  manifest = schema.read_manifest(config.data.data_dir)
  available = list(manifest["protocols"])
  if protocol in available:
    return protocol, ("mars_matlab" if protocol == "mars_matlab" else "torchreid")
  if protocol == "mars_matlab":
    raise ValueError(f"protocol mars_matlab needs a MARS dataset; {config.data.data_dir} "
                     f"({manifest['dataset']}) has protocols {available}.")
  return available[0], "torchreid"


def _outputs_to_average(config: cfg.ExperimentConfig, model) -> str:
  return "all" if config.eval.distance == "learned" else "embedding"


def extract_features(config: cfg.ExperimentConfig, model, partition: str,
                     protocol: str, split: int | None = None):
  """Mean clip outputs per tracklet of one partition.

  Returns (features: dict name -> float32 [N, ...], index) where `index` is the reader's
  partition metadata (pids, camids, tracklet_ids in the same order).
  """
  split = config.data.split if split is None else split
  index = data_reader.load_partition(config.data.data_dir, partition, split=split,
                                     protocol=protocol)
  dataset = data_pipeline.make_test_dataset(config, partition, split=split, protocol=protocol)
  which = _outputs_to_average(config, model)

  @tf.function
  def run(batch):
    inputs = {k: batch[k] for k in ("clips", "flow", "keypoints") if k in batch}
    outputs = model(inputs, training=False)
    if which == "embedding":
      outputs = {"embedding": outputs["embedding"]}
    else:
      outputs = {k: v for k, v in outputs.items() if k != "logits"}
    return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}

  n = len(index.pids)
  sums: dict[str, np.ndarray] = {}
  counts = np.zeros(n, np.int64)
  for batch in dataset:
    outputs = run(batch)
    idx = batch["index"].numpy()
    for key, value in outputs.items():
      value = value.numpy()
      if key not in sums:
        sums[key] = np.zeros((n,) + value.shape[1:], np.float64)
      np.add.at(sums[key], idx, value)
    np.add.at(counts, idx, 1)
  if (counts == 0).any():
    missing = np.flatnonzero(counts == 0)[:5]
    raise RuntimeError(f"partition {partition!r}: tracklets at positions {missing.tolist()} "
                       "produced no clip.")
  features = {k: (v / counts.reshape((-1,) + (1,) * (v.ndim - 1))).astype(np.float32)
              for k, v in sums.items()}
  return features, index


def distance_matrix(config: cfg.ExperimentConfig, model, query: dict, gallery: dict
                    ) -> np.ndarray:
  if config.eval.distance == "learned":
    if not hasattr(model, "pairwise_distance"):
      raise ValueError(f"eval.distance=learned but model {config.model.name!r} has no "
                       "pairwise_distance; use euclidean, sqeuclidean or cosine.")

    def pairwise(q, g):
      return np.asarray(model.pairwise_distance(q, g))

    return metrics.compute_distance_matrix(query, gallery, metric="learned", pairwise_fn=pairwise)
  return metrics.compute_distance_matrix(query["embedding"], gallery["embedding"],
                                         metric=config.eval.distance)


def evaluate_model(config: cfg.ExperimentConfig, model, protocol: str | None = None,
                   rerank: bool | None = None, split: int | None = None) -> dict:
  """Extracts features, computes distances and metrics. Returns a dict with `summary`."""
  rerank = config.eval.rerank if rerank is None else rerank
  manifest_protocol, metric_protocol = resolve_protocol(config, protocol)
  query, q_index = extract_features(config, model, "query", manifest_protocol, split)
  gallery, g_index = extract_features(config, model, "gallery", manifest_protocol, split)
  distmat = distance_matrix(config, model, query, gallery)
  if rerank:
    q_q = distance_matrix(config, model, query, query)
    g_g = distance_matrix(config, model, gallery, gallery)
    distmat = metrics.re_ranking(distmat, q_q, g_g)
  result = metrics.evaluate_rank(distmat, q_index.pids, g_index.pids, q_index.camids,
                                 g_index.camids, max_rank=config.eval.max_rank,
                                 protocol=metric_protocol)
  summary = metrics.summarize(result)
  logging.info("%s (%s%s): rank-1 %.4f rank-5 %.4f mAP %.4f over %d queries",
               config.experiment, manifest_protocol, ", re-ranked" if rerank else "",
               summary["rank1"], summary["rank5"], summary["mAP"],
               result["num_valid_queries"])
  return {"summary": summary, "result": result, "distmat": distmat, "query_index": q_index,
          "gallery_index": g_index, "protocol": manifest_protocol, "rerank": bool(rerank)}


# ------------------------------------------------------------------------------ reports


def write_reports(config: cfg.ExperimentConfig, evaluation: dict, out_dir: str,
                  checkpoint_step: int, writer=None) -> dict:
  """metrics.json (contract keys), metrics.md, cmc.png and rank-list PNGs under out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  summary = evaluation["summary"]
  result = evaluation["result"]
  record = {key: float(summary[key]) for key in SUMMARY_KEYS}
  record.update({
      "protocol": evaluation["protocol"] + ("+rerank" if evaluation["rerank"] else ""),
      "checkpoint_step": int(checkpoint_step),
      "experiment": config.experiment,
      "split": int(config.data.split),
      "num_valid_queries": int(result["num_valid_queries"]),
      "num_gallery": int(len(evaluation["gallery_index"].pids)),
      "cmc": [float(x) for x in result["cmc"]],
  })
  _write_json(os.path.join(out_dir, "metrics.json"), record)
  row = {"experiment": config.experiment, "protocol": record["protocol"],
         "rank-1": summary["rank1"], "rank-5": summary["rank5"], "rank-10": summary["rank10"],
         "rank-20": summary["rank20"], "mAP": summary["mAP"]}
  report.write_markdown_table(os.path.join(out_dir, "metrics.md"), [row],
                              title=f"{config.experiment} at step {checkpoint_step}")
  report.plot_cmc(os.path.join(out_dir, "cmc.png"), {record["protocol"]: result["cmc"]})
  images = rank_list_images(config, evaluation, config.eval.num_rank_lists)
  rank_dir = os.path.join(out_dir, "rank_lists")
  os.makedirs(rank_dir, exist_ok=True)
  for name, image in images:
    report.save_png(os.path.join(rank_dir, f"{name}.png"), image)
  if writer is not None:
    with writer.as_default(step=checkpoint_step):
      for key in SUMMARY_KEYS:
        tf.summary.scalar(f"eval/{key}", summary[key])
      for name, image in images:
        tf.summary.image(f"rank_list/{name}", image[None])
    writer.flush()
  return record


def _write_json(path: str, content: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(content, f, indent=1)
  os.replace(tmp, path)


def rank_list_images(config, evaluation: dict, num_queries: int, top_k: int = 10,
                     frames_per_tracklet: int = 4):
  """(name, uint8 image) for the first `num_queries` queries with a valid match."""
  if num_queries <= 0:
    return []
  distmat = evaluation["distmat"]
  q_index, g_index = evaluation["query_index"], evaluation["gallery_index"]
  chosen = []
  for qi in range(len(q_index.pids)):
    valid = ~((g_index.pids == q_index.pids[qi]) & (g_index.camids == q_index.camids[qi]))
    if (valid & (g_index.pids == q_index.pids[qi])).any():
      order = np.argsort(distmat[qi], kind="stable")
      order = order[valid[order]][:top_k]
      chosen.append((qi, order))
    if len(chosen) == num_queries:
      break
  images = []
  for qi, order in chosen:
    q_frames = read_tracklet_frames(q_index, qi, frames_per_tracklet)
    g_frames = [read_tracklet_frames(g_index, g, frames_per_tracklet) for g in order]
    correct = [bool(g_index.pids[g] == q_index.pids[qi]) for g in order]
    image = report.render_rank_list(q_frames, g_frames, correct,
                                    [float(distmat[qi, g]) for g in order])
    images.append((f"query_{qi:04d}_pid_{int(q_index.pids[qi])}", image))
  return images


def read_tracklet_frames(index, position: int, max_frames: int) -> np.ndarray:
  """Up to `max_frames` evenly spaced decoded frames (uint8 [n, H, W, 3]) of the tracklet at
  `position` of a partition index, read directly at its record's offset in the shard."""
  path = index.shard_files[int(index.shard_index[position])]
  with open(path, "rb") as f:
    f.seek(int(index.offsets[position]) + 12)  # TFRecord framing: length (8) + its CRC (4)
    example = tf.train.Example.FromString(f.read(int(index.lengths[position])))
  encoded = example.features.feature[schema.FRAMES].bytes_list.value
  picks = np.unique(np.linspace(0, len(encoded) - 1, num=min(max_frames, len(encoded)))
                    .round().astype(int))
  frames = [tf.io.decode_image(encoded[i], channels=3, expand_animations=False).numpy()
            for i in picks]
  height, width = frames[0].shape[:2]
  frames = [f if f.shape[:2] == (height, width) else
            tf.image.resize(f, (height, width)).numpy().round().astype(np.uint8) for f in frames]
  return np.stack(frames)
