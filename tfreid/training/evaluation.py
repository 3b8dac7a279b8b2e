"""Evaluation driver: dense test features -> distances -> CMC/mAP, and the reports.

Every clip of every query and gallery tracklet goes through the model (the dense test
pipeline, clips batched so a 900-frame tracklet never sits in one batch); clip outputs are
merged per tracklet by the model's merge (the mean, torchreid's "dense" test, unless the
model declares another: `tfreid.models.contract`); the distance is the model's own metric
when it has one, else Euclidean (`eval.distance` chooses another); CMC and mAP follow
`eval.protocol` (`tfreid.metrics.evaluate_rank`).

Reports: `write_reports` writes one evaluation (metrics.json, metrics.md, cmc.png, rank-list
PNGs, TensorBoard); `aggregate_records` and `write_aggregate_reports` turn the per-split
records of a 10-split dataset into the mean and sample standard deviation over splits
(`python -m tfreid.splits`, `python -m tfreid.evaluate --split=all`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import weakref

from absl import logging
import numpy as np
import tensorflow as tf

from tfreid import config as cfg
from tfreid import metrics
from tfreid.data import pipeline as data_pipeline
from tfreid.data import reader as data_reader
from tfreid.data import schema
from tfreid.data import streams as streams_lib
from tfreid.metrics import report
from tfreid.models import contract
from tfreid.metrics import splits as splits_lib

SUMMARY_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP")


def resolve_protocol(config: cfg.ExperimentConfig, protocol: str | None = None
                     ) -> tuple[str, str]:
  """Returns (manifest protocol name, metric protocol) for the dataset of `config`.

  MARS has both `torchreid` and `mars_matlab` in its manifest; the closed-set datasets
  (iLIDS-VID, PRID-2011: query camera vs the other camera) and DukeMTMC-VideoReID have one,
  evaluated with the torchreid rules. An explicit `protocol` the dataset lacks is an error;
  `eval.protocol` of the config (used when `protocol` is None) falls back to the dataset's
  default protocol, so a MARS run evaluated with mars_matlab can be tested on PRID-2011
  (cross-dataset testing).
  """
  manifest = schema.read_manifest(config.data.data_dir)
  available = list(manifest["protocols"])
  wanted = protocol or config.eval.protocol
  if wanted in available:
    return wanted, ("mars_matlab" if wanted == "mars_matlab" else "torchreid")
  if protocol == "mars_matlab":
    raise ValueError(f"protocol mars_matlab needs a MARS dataset; {config.data.data_dir} "
                     f"({manifest['dataset']}) has protocols {available}. Evaluate it with "
                     f"--protocol={available[0]}.")
  if protocol is not None and protocol != "torchreid":
    raise ValueError(f"protocol {protocol!r} is not one of the protocols of "
                     f"{config.data.data_dir} ({manifest['dataset']}): {available}.")
  if wanted != available[0]:
    logging.info("%s has no protocol %r; using its default protocol %r.",
                 config.data.data_dir, wanted, available[0])
  return available[0], "torchreid"


# model -> traced feature function; entries go with their model.
_FEATURE_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _feature_function(model, streams):
  """The model's test forward pass as one tf.function per model (traced once, whatever the
  partition, split or last-batch size): the per-clip statistics its tracklet merge sums
  (`tfreid.models.contract.tracklet_statistics`), float32."""
  key = tuple(streams)
  functions = _FEATURE_FUNCTIONS.setdefault(model, {})
  if key not in functions:
    model_ref = weakref.ref(model)  # the cache must not keep the model alive

    @tf.function(reduce_retracing=True)
    def run(batch):
      model = model_ref()
      outputs = model(streams_lib.model_inputs(batch, key), training=False)
      return contract.tracklet_statistics(model, outputs, batch.get("frame_weight"))

    functions[key] = run
  return functions[key]


def partition_clips(config: cfg.ExperimentConfig, partition: str, protocol: str,
                    split: int | None = None, index=None, condition=None):
  """(index, dataset, streams): a partition's metadata as the reader gives it (or `index`,
  a part of it), its test clips as evaluation reads them (every clip, `eval`'s sequence
  lengths; `condition`: a test-time augmentation condition, see
  `data_pipeline.make_test_dataset`) and the streams the method reads."""
  split = config.data.split if split is None else split
  streams = contract.input_streams(config)
  if index is None:
    index = data_reader.load_partition(config.data.data_dir, partition, split=split,
                                       protocol=protocol,
                                       skip_corrupt=config.data.skip_corrupt)
  dataset = data_pipeline.make_test_dataset(
      config, partition, split=split, protocol=protocol, index=index, streams=streams,
      num_frames=config.eval.partition_seq_len(partition), length_seed=config.eval.length_seed,
      condition=condition)
  return index, dataset, streams


def extract_features(config: cfg.ExperimentConfig, model, partition: str,
                     protocol: str, split: int | None = None, index=None, condition=None):
  """Tracklet representations of one partition: the per-clip statistics of every test clip
  summed per tracklet (float64), then finished by the model's merge (the mean by default;
  `tfreid.models.contract.finish_tracklet`), as the exported `embed_tracklet` does.
  `index` (a part of the partition) and `condition`: see `partition_clips`.

  Returns (features: dict name -> float32 [N, ...], index) where `index` is the reader's
  partition metadata (pids, camids, tracklet_ids in the same order).
  """
  index, dataset, streams = partition_clips(config, partition, protocol, split, index,
                                            condition)
  run = _feature_function(model, streams)
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
  empty = counts == 0
  if empty.any():
    if not config.data.skip_corrupt or empty.all():
      missing = np.flatnonzero(empty)[:5]
      raise RuntimeError(f"partition {partition!r}: tracklets at positions "
                         f"{missing.tolist()} produced no clip.")
    # Records skipped as corrupt (data.skip_corrupt) leave the evaluation, counted.
    keep = ~empty
    logging.warning("partition %r: %d tracklet(s) left out of the evaluation, their records "
                    "being unreadable (data.skip_corrupt).", partition, int(empty.sum()))
    sums = {k: v[keep] for k, v in sums.items()}
    counts = counts[keep]
    index = subset_index(index, keep, f"{int(empty.sum())} unreadable record(s) left out")
  return contract.finish_tracklet(model, sums, counts), index


def augmented_features(config: cfg.ExperimentConfig, model, partition: str, protocol: str,
                       split: int | None, features: dict, index) -> list[dict]:
  """The partition's representations under each test-time augmentation condition
  (`eval.tta_conditions`), in order. `features` and `index`: the plain ones
  (:func:`extract_features`). Tracklets of eval.tta_max_length frames or more keep their
  plain representation in every condition; the others are embedded again, once per
  condition."""
  if not config.eval.tta_on:
    return [features]
  conditions = config.eval.tta_conditions()
  short = np.ones(len(index.pids), bool)
  if config.eval.tta_max_length:
    short = np.asarray(index.num_frames) < config.eval.tta_max_length
  if not short.any():
    return [features] * len(conditions)
  part = subset_index(index, short, "longer tracklets keep their plain clips")
  result = []
  for condition in conditions:
    augmented, _ = extract_features(config, model, partition, protocol, split, index=part,
                                    condition=condition)
    merged = {key: np.array(value, copy=True) for key, value in features.items()}
    for key, value in augmented.items():
      merged[key][short] = value
    result.append(merged)
  return result


def averaged_distance(config: cfg.ExperimentConfig, model, queries: list[dict],
                      galleries: list[dict]) -> np.ndarray:
  """The mean over test-time augmentation conditions of :func:`distance_matrix` (one
  condition: that matrix). For the learned similarity s of a distance 1 - s, the mean of
  the distances is 1 - the mean of the similarities."""
  if len(queries) == 1:
    return distance_matrix(config, model, queries[0], galleries[0])
  total = None
  for query, gallery in zip(queries, galleries):
    d = np.asarray(distance_matrix(config, model, query, gallery), np.float64)
    total = d if total is None else total + d
  return total / len(queries)


def subset_index(index, keep: np.ndarray, reason: str):
  """The partition index restricted to the tracklets where `keep` is True; `reason` is
  added to its `skipped` notes."""
  n = len(index.pids)
  fields = {f.name: getattr(index, f.name)[keep] for f in dataclasses.fields(index)
            if isinstance(getattr(index, f.name), np.ndarray)
            and getattr(index, f.name).shape[:1] == (n,)}
  return dataclasses.replace(index, **fields, skipped=tuple(index.skipped) + (reason,))


def distance_matrix(config: cfg.ExperimentConfig, model, query: dict, gallery: dict
                    ) -> np.ndarray:
  """Query x gallery distances by the metric `contract.resolve_metric` chooses: the model's
  learned metric (on the representation keys it reads), or a fixed one on `embedding`."""
  metric = contract.resolve_metric(config, model)
  if metric == "learned":
    keys = contract.distance_input_keys(model, query)

    def pairwise(q, g):
      return np.asarray(model.pairwise_distance(q, g))

    return metrics.compute_distance_matrix({k: query[k] for k in keys},
                                           {k: gallery[k] for k in keys}, metric="learned",
                                           pairwise_fn=pairwise)
  return metrics.compute_distance_matrix(query["embedding"], gallery["embedding"],
                                         metric=metric)


def evaluate_model(config: cfg.ExperimentConfig, model, protocol: str | None = None,
                   rerank: bool | None = None, split: int | None = None) -> dict:
  """Extracts features, computes distances and metrics. Returns a dict with `summary`."""
  rerank = config.eval.rerank if rerank is None else rerank
  manifest_protocol, metric_protocol = resolve_protocol(config, protocol)
  query, q_index = extract_features(config, model, "query", manifest_protocol, split)
  gallery, g_index = extract_features(config, model, "gallery", manifest_protocol, split)
  # Test-time augmentation (eval.tta_*): the distance averaged over its conditions.
  queries = augmented_features(config, model, "query", manifest_protocol, split, query,
                               q_index)
  galleries = augmented_features(config, model, "gallery", manifest_protocol, split,
                                 gallery, g_index)
  distmat = averaged_distance(config, model, queries, galleries)
  if rerank:
    q_q = averaged_distance(config, model, queries, queries)
    g_g = averaged_distance(config, model, galleries, galleries)
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


def dataset_info(data_dir: str, split: int) -> dict:
  """{"dataset", "data_dir", "split", "num_splits"} of a converted dataset, for reports."""
  manifest = schema.read_manifest(data_dir)
  return {"dataset": manifest.get("dataset"), "data_dir": os.path.abspath(data_dir),
          "split": int(split), "num_splits": len(manifest.get("splits", []))}


# Camera names of the query and gallery sides of the closed-set datasets (REFERENCE_FACTS.md).
_CLOSED_SET_CAMERAS = {"ilidsvid": ("cam1", "cam2"), "prid2011": ("cam_a", "cam_b")}


def protocol_description(data_dir: str, protocol: str, split: int = 0) -> str:
  """One sentence saying how query and gallery of `protocol` are formed and scored."""
  manifest = schema.read_manifest(data_dir)
  dataset = manifest.get("dataset")
  num_splits = len(manifest.get("splits", []))
  roles = manifest["protocols"][protocol]
  parts = manifest["splits"][split]
  num_query, num_gallery = len(parts[roles["query"]]), len(parts[roles["gallery"]])
  rules = ("official MARS MATLAB rules: junk = pid -1 and same pid and camera, trapezoid AP, "
           "all queries" if protocol == "mars_matlab" else
           "torchreid rules: same pid and camera removed, non-interpolated AP, queries "
           "without a true match skipped")
  if dataset in _CLOSED_SET_CAMERAS:
    query_cam, gallery_cam = _CLOSED_SET_CAMERAS[dataset]
    return (f"{dataset} closed-set {num_splits}-split protocol: per split, query = the "
            f"{query_cam} tracklets of the test persons ({num_query} in split {split}), "
            f"gallery = their {gallery_cam} tracklets ({num_gallery}); one true match per "
            f"query; CMC by the {rules}")
  return (f"{dataset}, protocol {protocol}: query = partition {roles['query']!r} "
          f"({num_query} tracklets), gallery = partition {roles['gallery']!r} "
          f"({num_gallery}); CMC and mAP by the {rules}")


def write_reports(config: cfg.ExperimentConfig, evaluation: dict, out_dir: str,
                  checkpoint_step: int, writer=None, extra: dict | None = None) -> dict:
  """metrics.json (contract keys), metrics.md, cmc.png and rank-list PNGs under out_dir.

  `extra` (e.g. `trained_on` / `tested_on` of a cross-dataset test) is added to the
  metrics.json record. With `writer`, the scalars `eval/rank1` ... `eval/mAP` and the
  rank-list images `rank_list/<name>` go to TensorBoard at `checkpoint_step`.
  """
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
      # Tracklets or shards left out as unreadable (data.skip_corrupt), per side.
      "skipped": {"query": list(evaluation["query_index"].skipped),
                  "gallery": list(evaluation["gallery_index"].skipped)},
      "cmc": [float(x) for x in result["cmc"]],
  })
  if config.eval.query_seq_len or config.eval.gallery_seq_len:
    # Fixed-length probe and gallery sequences (0: every frame).
    record["sequence_lengths"] = {"query": config.eval.query_seq_len,
                                  "gallery": config.eval.gallery_seq_len,
                                  "seed": config.eval.length_seed}
  if config.eval.tta_on:
    # Test-time augmentation: the distance is the mean over these (mirror, shift) conditions.
    record["test_time_augmentation"] = {
        "conditions": [[bool(f), float(s)] for f, s in config.eval.tta_conditions()],
        "max_length": config.eval.tta_max_length}
  record.update(extra or {})
  _write_json(os.path.join(out_dir, "metrics.json"), record)
  # In %, one decimal, as the console summary and the split reports (metrics.json keeps
  # the fractions at full precision).
  row = {"experiment": config.experiment, "protocol": record["protocol"]}
  row.update({name: 100 * float(summary[key]) for name, key in zip(
      ("rank-1", "rank-5", "rank-10", "rank-20", "mAP"), SUMMARY_KEYS)})
  title = f"{config.experiment} at step {checkpoint_step}"
  tested = record.get("tested_on")
  if tested:
    title += f", tested on {tested['dataset']} split {tested['split']}"
  trained = record.get("trained_on")
  if trained and record.get("cross_dataset"):
    title += f" (trained on {trained['dataset']} split {trained['split']})"
  report.write_markdown_table(os.path.join(out_dir, "metrics.md"), [row], title=title,
                              float_format="{:.1f}")
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


def aggregate_records(records: list[dict]) -> dict:
  """Mean and sample std (`SPLITS_STD_DDOF`) of per-split metrics.json records.

  Returns a record with the contract keys (`rank1` ... `mAP`, the means over the splits),
  `rank1_std` ... `mAP_std` (None for a single split, whose spread is undefined),
  `std` (which standard deviation), `splits`, `num_splits`, `per_split` (split, the five
  metrics, checkpoint_step, num_valid_queries of each) and `cmc` (the mean curve, when
  every split has a curve of the same length).
  """
  if not records:
    raise ValueError("no per-split records to aggregate.")
  ddof = splits_lib.SPLITS_STD_DDOF if len(records) > splits_lib.SPLITS_STD_DDOF else 0
  aggregated = metrics.aggregate_splits(records, ddof=ddof)
  out = {key: aggregated[key] for key in SUMMARY_KEYS}
  for key in SUMMARY_KEYS:
    out[f"{key}_std"] = (aggregated[f"{key}_std"] if ddof == splits_lib.SPLITS_STD_DDOF
                         else None)
  out["std"] = (f"sample standard deviation over splits (ddof={splits_lib.SPLITS_STD_DDOF})"
                if ddof == splits_lib.SPLITS_STD_DDOF else "undefined for a single split")
  out["splits"] = [int(r["split"]) for r in records]
  out["num_splits"] = len(records)
  out["per_split"] = [
      {"split": int(r["split"]), **{key: float(r[key]) for key in SUMMARY_KEYS},
       "checkpoint_step": r.get("checkpoint_step"),
       "num_valid_queries": r.get("num_valid_queries")} for r in records]
  if "cmc" in aggregated:
    out["cmc"] = [float(x) for x in aggregated["cmc"]]
  return out


def spread_sentence(aggregate: dict) -> str:
  """How to read the last row of an aggregate table (mean ± which std, or one split)."""
  if aggregate["mAP_std"] is None:
    return ("Values in %; the last row repeats the single split (a standard deviation needs "
            "two or more).")
  return f"Values in %; the last row is the mean ± {aggregate['std']}."


def write_aggregate_reports(out_dir: str, aggregate: dict, title: str, description: str,
                            json_name: str = "metrics.json", md_name: str = "metrics.md",
                            cmc_name: str = "cmc.png", writer=None, step: int = 0) -> None:
  """Writes an `aggregate_records` record as JSON, a Markdown table (one row per split,
  then mean ± std, in %) and, when it has one, the mean CMC curve as PNG."""
  os.makedirs(out_dir, exist_ok=True)
  _write_json(os.path.join(out_dir, json_name), aggregate)
  columns = ("rank-1", "rank-5", "rank-10", "rank-20", "mAP")
  lines = [f"# {title}", "", description, "",
           "| split | " + " | ".join(columns) + " | step |",
           "|" + "|".join(" --- " for _ in range(len(columns) + 2)) + "|"]
  for row in aggregate["per_split"]:
    lines.append(f"| {row['split']} | " + " | ".join(
        f"{100 * row[key]:.1f}" for key in SUMMARY_KEYS) + f" | {row['checkpoint_step']} |")
  cells = []
  for key in SUMMARY_KEYS:
    std = aggregate[f"{key}_std"]
    cells.append(f"{100 * aggregate[key]:.1f}" +
                 ("" if std is None else f" ± {100 * std:.1f}"))
  num = aggregate["num_splits"]
  label = (f"mean ± std ({num} splits)" if aggregate["mAP_std"] is not None else
           f"mean ({num} split{'s' if num != 1 else ''})")
  lines.append(f"| {label} | " + " | ".join(cells) + " |  |")
  with open(os.path.join(out_dir, md_name), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  if "cmc" in aggregate:
    report.plot_cmc(os.path.join(out_dir, cmc_name),
                    {f"mean of {aggregate['num_splits']} splits": aggregate["cmc"]},
                    title=title)
  if writer is not None:
    with writer.as_default(step=step):
      for key in SUMMARY_KEYS:
        tf.summary.scalar(f"eval/{key}", aggregate[key])
        if aggregate[f"{key}_std"] is not None:
          tf.summary.scalar(f"eval/{key}_std", aggregate[f"{key}_std"])
    writer.flush()


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
