"""`python -m tfreid.evaluate` on a tiny trained run: metrics.json against an independent
evaluation, metrics.md, cmc.png, rank-list images, TensorBoard, the CLI in a subprocess,
cross-dataset testing, and evaluation without pretrained weights or training data.

One tiny nonlocal_i3d run is trained on dataset A (4 training identities; 12 query and 12
gallery tracklets whose frames are flat colours coding the tracklet: G = tracklet id, R =
frame number, PNG so exact). Its config.yaml is then changed to name a pretrained backbone
file that does not exist, as for a run whose weight file is gone: evaluation must not read
it. The reference features are computed here from the shards with numpy (dense clips of T
frames, the last one padded cyclically) and the restored Keras model, and ranked with
`evaluate_rank` on numpy Euclidean distances.
"""

import glob
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfreid import config as cfg
from tfreid import evaluate
from tfreid.backbones.weights import WeightsError
from tfreid.data import schema
from tfreid.metrics import evaluate_rank
from tfreid.metrics import report
from tfreid.models import build_model
from tfreid.training import evaluation
from tfreid.training import trainer as trainer_lib

import data_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, H, W = 2, 32, 16
NUM_RANK_LISTS = 3
TINY = ["data.height=32", "data.width=16", f"data.seq_len={T}", "data.num_identities=4",
        "data.num_instances=2", "data.test_batch_size=8", "model.backbone.base_width=4",
        "model.backbone.block_counts=[1, 1, 1, 1]",
        "model.backbone.nonlocal_blocks.blocks_per_stage=[0, 1, 1, 0]",
        "model.head.embedding_dim=8", "trainer.epochs=1", "trainer.log_every_steps=1",
        "runtime.jit_compile=false", f"eval.num_rank_lists={NUM_RANK_LISTS}"]
KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP")


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Dataset A, a run trained on it (1 step), its config naming a missing weight file, and
  the evaluate CLI started in a subprocess on it (plus one on a directory with no run)."""
  root = tmp_path_factory.mktemp("evaluate")
  data_a = str(root / "data_a")
  data_fixtures.write_tiny_dataset(data_a, num_ids=4, tracklets_per_id=2, num_frames=(2, 5),
                                   height=H, width=W, seed=1, num_test_ids=12,
                                   frame_format="png", content="code")
  model_dir = str(root / "run")
  config = cfg.build_config("nonlocal_i3d:synthetic", overrides=TINY, data_dir=data_a)
  trainer_lib.run_training(config, model_dir)
  # The run was (as far as config.yaml says) initialised from a Kinetics weight file that is
  # no longer there.
  config = cfg.load_config(os.path.join(model_dir, "config.yaml"))
  config.model.backbone.init = "kinetics"
  config.model.backbone.weights_path = str(root / "gone" / "resnet3d_kinetics.weights.h5")
  cfg.save_config(config, os.path.join(model_dir, "config.yaml"))
  cli = [sys.executable, "-m", "tfreid.evaluate"]
  procs = {
      "ok": subprocess.Popen(cli + [f"--model_dir={model_dir}",
                                    f"--output_dir={root / 'cli_eval'}"],
                             cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True),
      "no_run": subprocess.Popen(cli + [f"--model_dir={root / 'empty'}"], cwd=REPO, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)}
  yield {"root": root, "data_a": data_a, "model_dir": model_dir, "config": config,
         "procs": procs}
  for proc in procs.values():
    if proc.poll() is None:
      proc.kill()
      proc.communicate()


@pytest.fixture(scope="module")
def evaluated(run):
  """evaluate_run in this process: the record and the files it wrote."""
  record = evaluate.evaluate_run(run["model_dir"])
  out_dir = os.path.join(run["model_dir"], "eval")
  with open(os.path.join(out_dir, "metrics.json")) as f:
    written = json.load(f)
  return {"record": record, "written": written, "out_dir": out_dir}


# ------------------------------------------------------------- independent reference


def _restored_model(run, num_classes=4):
  """The run's model restored here: own build (random init) + the latest checkpoint."""
  config = cfg.load_config(os.path.join(run["model_dir"], "config.yaml"))
  config.model.backbone.init = "none"
  model = build_model(config, num_classes)
  model({"clips": tf.zeros([1, T, H, W, 3], tf.uint8)}, training=False)
  tf.train.Checkpoint(model=model).restore(
      tf.train.latest_checkpoint(run["model_dir"])).expect_partial()
  return model


def _tracklets(data_dir):
  """tracklet id -> (pid, camid, uint8 frames [n, H, W, 3]) read from every shard."""
  out = {}
  for path in sorted(glob.glob(os.path.join(data_dir, "*.tfrecord"))):
    for raw in tf.data.TFRecordDataset(path):
      feature = tf.train.Example.FromString(raw.numpy()).features.feature
      frames = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
                         for b in feature[schema.FRAMES].bytes_list.value])
      out[feature[schema.TRACKLET_ID].int64_list.value[0]] = (
          feature[schema.PID].int64_list.value[0], feature[schema.CAMID].int64_list.value[0],
          frames)
  return out


def _dense_clips(frames):
  """Non-overlapping clips of T frames, the last padded cyclically: [C, T, H, W, 3]."""
  clips = []
  for start in range(0, len(frames), T):
    m = min(len(frames) - start, T)
    clips.append(frames[[start + i % m for i in range(T)]])
  return np.stack(clips)


def _reference(model, data_dir, split=0, protocol="torchreid"):
  """(evaluate_rank result, distmat, query ids, gallery ids, tracklets) from numpy features."""
  manifest = schema.read_manifest(data_dir)
  roles = manifest["protocols"][protocol]
  tracklets = _tracklets(data_dir)
  ids = {role: manifest["splits"][split][roles[role]] for role in ("query", "gallery")}
  features = {}
  for role, tids in ids.items():
    clips = [_dense_clips(tracklets[t][2]) for t in tids]
    embeddings = np.asarray(model({"clips": np.concatenate(clips)}, training=False)["embedding"])
    ends = np.cumsum([len(c) for c in clips])
    features[role] = np.stack([embeddings[end - len(c):end].mean(axis=0)
                               for c, end in zip(clips, ends)]).astype(np.float64)
  q, g = features["query"], features["gallery"]
  distmat = np.sqrt(np.maximum(
      (q ** 2).sum(1)[:, None] + (g ** 2).sum(1)[None, :] - 2 * q @ g.T, 0))
  pids = {role: np.array([tracklets[t][0] for t in tids]) for role, tids in ids.items()}
  cams = {role: np.array([tracklets[t][1] for t in tids]) for role, tids in ids.items()}
  with pytest.warns(UserWarning, match="fewer than max_rank"):
    result = evaluate_rank(distmat, pids["query"], pids["gallery"], cams["query"],
                           cams["gallery"], max_rank=50)
  return result, distmat, ids, tracklets


@pytest.fixture(scope="module")
def reference(run):
  return _reference(_restored_model(run), run["data_a"])


def _assert_matches(record, result):
  cmc = result["cmc"]
  # A gallery smaller than rank k: the curve ends at the gallery size and stays flat.
  expected = {f"rank{k}": cmc[min(k, len(cmc)) - 1] for k in (1, 5, 10, 20)}
  expected["mAP"] = result["mAP"]
  for key in KEYS:
    assert record[key] == pytest.approx(expected[key], abs=1e-9), key
  np.testing.assert_allclose(record["cmc"], cmc, atol=1e-9)
  assert record["num_valid_queries"] == result["num_valid_queries"]


# ----------------------------------------------------------------------------- tests


def test_metrics_json_matches_an_independent_evaluation(run, evaluated, reference):
  record, written = evaluated["record"], evaluated["written"]
  result = reference[0]
  assert set(KEYS) | {"protocol", "checkpoint_step"} <= set(written)
  _assert_matches(written, result)
  assert written["protocol"] == "torchreid"
  assert written["checkpoint_step"] == 1  # 4 identities, P = 4: one step in one epoch
  assert written["num_gallery"] == 12 and written["num_valid_queries"] == 12
  assert written["split"] == 0 and written["experiment"] == "nonlocal_i3d:synthetic"
  assert written["cross_dataset"] is False
  assert written["trained_on"] == {"dataset": "folder", "data_dir": run["data_a"], "split": 0,
                                   "num_splits": 1, "num_identities": 4}
  assert written["tested_on"] == {"dataset": "folder", "data_dir": run["data_a"], "split": 0,
                                  "num_splits": 1}
  assert record["checkpoint"] == tf.train.latest_checkpoint(run["model_dir"])
  assert record == written


def test_evaluation_reads_no_pretrained_weights(run, evaluated):
  """config.yaml names a Kinetics weight file that does not exist: building the model as
  training does fails, evaluation (backbone.init=none, then the checkpoint) does not."""
  with pytest.raises(WeightsError, match="resnet3d_kinetics.weights.h5' does not exist"):
    build_model(run["config"], 4)
  assert evaluated["written"]["checkpoint_step"] == 1


def test_markdown_table_and_cmc_plot(evaluated):
  record, out_dir = evaluated["written"], evaluated["out_dir"]
  with open(os.path.join(out_dir, "metrics.md")) as f:
    lines = f.read().splitlines()
  assert lines[0] == "# nonlocal_i3d:synthetic at step 1, tested on folder split 0"
  assert lines[2] == "| experiment | protocol | rank-1 | rank-5 | rank-10 | rank-20 | mAP |"
  cells = [c.strip() for c in lines[4].strip("|").split("|")]
  assert cells[:2] == ["nonlocal_i3d:synthetic", "torchreid"]
  assert cells[2:] == [f"{100 * record[k]:.1f}" for k in KEYS]  # % as on the console
  with Image.open(os.path.join(out_dir, "cmc.png")) as image:
    assert image.format == "PNG" and image.size == (600, 450)


def _column_left(column, border=4, gap=6, cell_w=W):
  """Left x of rank-list column `column` (0 = query; a double gap after it)."""
  width = cell_w + 2 * border
  return gap + column * (width + gap) + (gap if column > 0 else 0)


def test_rank_list_images_show_the_query_and_its_top_10(evaluated, reference):
  result, distmat, ids, tracklets = reference
  del result
  rank_dir = os.path.join(evaluated["out_dir"], "rank_lists")
  # Every query has a cross-camera match: the first NUM_RANK_LISTS queries are drawn.
  expected_names = [f"query_{qi:04d}_pid_{tracklets[ids['query'][qi]][0]}.png"
                    for qi in range(NUM_RANK_LISTS)]
  assert sorted(os.listdir(rank_dir)) == expected_names
  border, text_h = 4, 14
  for qi, name in enumerate(expected_names):
    with Image.open(os.path.join(rank_dir, name)) as png:
      assert png.format == "PNG"
      image = np.asarray(png.convert("RGB"))
    # Query + 10 columns of 4 frames of 32x16 with 4-pixel borders, 6-pixel gaps, a label row.
    assert image.shape == (text_h + 4 * H + 2 * border, 11 * (W + 2 * border + 6) + 12, 3)
    query_tid = ids["query"][qi]
    query_pid = tracklets[query_tid][0]
    top = np.argsort(distmat[qi], kind="stable")[:10]
    columns = [(query_tid, report.QUERY_COLOR)] + [
        (ids["gallery"][g], report.CORRECT_COLOR if tracklets[ids["gallery"][g]][0] == query_pid
         else report.WRONG_COLOR) for g in top]
    assert sum(color == report.CORRECT_COLOR for _, color in columns) == 1
    for column, (tid, color) in enumerate(columns):
      left = _column_left(column)
      assert tuple(image[text_h, left]) == color, (name, column)
      assert tuple(image[text_h + 4 * H + 2 * border - 1, left + W + 2 * border - 1]) == color
      # The first frame shown is frame 0 of that tracklet: R = 0, G = tracklet id.
      assert tuple(image[text_h + border + 1, left + border + 1]) == (0, tid % 256, 0), (
          name, column)


def _events(directory):
  files = glob.glob(os.path.join(directory, "events.out.tfevents.*"))
  assert len(files) == 1, files
  scalars, images = {}, {}
  for event in tf.compat.v1.train.summary_iterator(files[0]):
    for value in event.summary.value:
      if value.tag.startswith("eval/"):
        scalars[value.tag] = (event.step, float(tf.make_ndarray(value.tensor)))
      elif value.tag.startswith("rank_list/"):
        encoded = tf.make_ndarray(value.tensor)  # [width, height, png]
        images[value.tag] = (event.step, int(encoded[0]), int(encoded[1]),
                             tf.io.decode_png(encoded[2]).numpy())
  return scalars, images


def test_tensorboard_holds_the_scalars_and_rank_lists(evaluated):
  record, out_dir = evaluated["written"], evaluated["out_dir"]
  scalars, images = _events(out_dir)
  assert set(scalars) == {f"eval/{k}" for k in KEYS}
  for key in KEYS:
    step, value = scalars[f"eval/{key}"]
    assert step == 1 and value == pytest.approx(record[key], abs=1e-7)
  names = sorted(os.listdir(os.path.join(out_dir, "rank_lists")))
  assert sorted(images) == [f"rank_list/{n[:-4]}" for n in names]
  for name in names:
    step, width, height, pixels = images[f"rank_list/{name[:-4]}"]
    with Image.open(os.path.join(out_dir, "rank_lists", name)) as png:
      on_disk = np.asarray(png.convert("RGB"))
    assert step == 1 and (height, width) == on_disk.shape[:2]
    np.testing.assert_array_equal(pixels, on_disk)


def test_the_command_line(run, evaluated):
  proc = run["procs"]["ok"]
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  with open(run["root"] / "cli_eval" / "metrics.json") as f:
    cli = json.load(f)
  for key in KEYS + ("num_valid_queries", "checkpoint_step", "protocol", "split"):
    assert cli[key] == pytest.approx(evaluated["written"][key], abs=1e-6), key
  assert os.path.exists(run["root"] / "cli_eval" / "cmc.png")
  assert len(os.listdir(run["root"] / "cli_eval" / "rank_lists")) == NUM_RANK_LISTS
  table = stdout.strip().splitlines()
  assert table[-3] == "| rank-1 | rank-5 | rank-10 | rank-20 | mAP |"
  assert table[-1] == "| " + " | ".join(f"{100 * cli[k]:.1f}" for k in KEYS) + " |"
  proc = run["procs"]["no_run"]
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 2
  assert "config.yaml does not exist" in stderr and "python -m tfreid.train" in stderr


def test_cross_dataset_testing(run, evaluated):
  """Dataset B has 7 training identities (the run had 4) and 5 test identities: the model
  keeps the run's 4-class classifier, B's query/gallery are ranked, reports go to
  eval_<B's name> and the in-domain eval is left alone."""
  data_b = str(run["root"] / "data_b")
  data_fixtures.write_tiny_dataset(data_b, num_ids=7, tracklets_per_id=2, num_frames=(2, 4),
                                   height=H, width=W, seed=5, num_test_ids=5,
                                   frame_format="png", content="code", dataset="other")
  in_domain = os.path.join(run["model_dir"], "eval", "metrics.json")
  with open(in_domain) as f:
    before = f.read()
  record = evaluate.evaluate_run(run["model_dir"], data_dir=data_b)
  out_dir = os.path.join(run["model_dir"], "eval_other")
  with open(os.path.join(out_dir, "metrics.json")) as f:
    assert json.load(f) == record
  with open(in_domain) as f:
    assert f.read() == before
  assert record["cross_dataset"] is True
  assert record["trained_on"]["dataset"] == "folder"
  assert record["trained_on"]["num_identities"] == 4
  assert record["tested_on"] == {"dataset": "other", "data_dir": data_b, "split": 0,
                                 "num_splits": 1}
  _assert_matches(record, _reference(_restored_model(run), data_b)[0])
  assert record["num_gallery"] == 5
  assert os.path.exists(os.path.join(out_dir, "cmc.png"))
  assert len(os.listdir(os.path.join(out_dir, "rank_lists"))) == NUM_RANK_LISTS
  # B's 7 identities would not fit the checkpoint: the restore checks every variable.
  path = tf.train.latest_checkpoint(run["model_dir"])
  with pytest.raises(ValueError, match="does not fit the model built from the run's config.yaml "
                     r"with 7 training identities: .*shape \(8, 4\)"):
    evaluate.restore_model(run["config"], path, 7)


def test_identities_from_the_checkpoint_when_the_training_data_is_gone(run, evaluated):
  """A run copied to a machine without its training dataset still evaluates on another
  dataset: the classifier size is read from the checkpoint."""
  copy_dir = str(run["root"] / "copied_run")
  shutil.copytree(run["model_dir"], copy_dir, ignore=shutil.ignore_patterns("eval*", "train"))
  config = cfg.load_config(os.path.join(copy_dir, "config.yaml"))
  config.data.data_dir = str(run["root"] / "not_here")
  cfg.save_config(config, os.path.join(copy_dir, "config.yaml"))
  # The checkpoint file names its directory: point it at the copy.
  with open(os.path.join(copy_dir, "checkpoint"), "w") as f:
    f.write(f'model_checkpoint_path: "{os.path.basename(evaluated["record"]["checkpoint"])}"\n')
  record = evaluate.evaluate_run(copy_dir, data_dir=run["data_a"],
                                 output_dir=str(run["root"] / "copied_eval"))
  assert record["trained_on"]["num_identities"] == 4
  assert record["trained_on"]["dataset"] is None
  assert record["cross_dataset"] is True
  for key in KEYS:
    assert record[key] == pytest.approx(evaluated["written"][key], abs=1e-9)


def _translate_then_mirror(frames, flip, shift):
  """uint8 frames [n, H, W, 3] moved by round(shift * (H, W)) pixels (zeros filled in),
  then mirrored when flip."""
  sy, sx = round(shift * H), round(shift * W)
  out = np.zeros_like(frames)
  src_y, dst_y = slice(max(0, -sy), H - max(0, sy)), slice(max(0, sy), H - max(0, -sy))
  src_x, dst_x = slice(max(0, -sx), W - max(0, sx)), slice(max(0, sx), W - max(0, -sx))
  out[:, dst_y, dst_x] = frames[:, src_y, src_x]
  return out[:, :, ::-1] if flip else out


def test_test_time_augmentation_averages_the_distance_over_conditions(run, reference):
  """eval.tta_*: 2 mirror states x 2 diagonal shifts; tracklets shorter than
  tta_max_length frames are embedded under each condition, longer ones keep their plain
  clips; the distance is the mean of the conditions' Euclidean distances (numpy here)."""
  model = _restored_model(run)
  config = cfg.load_config(os.path.join(run["model_dir"], "config.yaml"))
  config.model.backbone.init = "none"
  config.eval.tta_flip, config.eval.tta_shifts = True, 2
  config.eval.tta_translate, config.eval.tta_max_length = 0.1, 4
  config.validate()
  conditions = config.eval.tta_conditions()
  assert conditions == [(False, -0.1), (True, -0.1), (False, 0.1), (True, 0.1)]
  with pytest.warns(UserWarning, match="fewer than max_rank"):
    got = evaluation.evaluate_model(config, model)
  _, plain, ids, tracklets = reference
  lengths = [len(tracklets[t][2]) for role in ids for t in ids[role]]
  assert min(lengths) < 4 <= max(lengths)  # both kinds of tracklets occur
  expected = np.zeros_like(plain)
  for flip, shift in conditions:
    features = {}
    for role, tids in ids.items():
      rows = []
      for t in tids:
        frames = tracklets[t][2]
        if len(frames) < 4:
          frames = _translate_then_mirror(frames, flip, shift)
        clips = _dense_clips(frames)
        rows.append(np.asarray(model({"clips": clips}, training=False)["embedding"],
                               np.float64).mean(axis=0))
      features[role] = np.stack(rows)
    q, g = features["query"], features["gallery"]
    expected += np.sqrt(((q[:, None] - g[None]) ** 2).sum(-1)) / len(conditions)
  np.testing.assert_allclose(got["distmat"], expected, rtol=1e-4, atol=1e-5)
  assert np.abs(expected - plain).max() > 1e-3  # the conditions change the distances
  record = evaluation.write_reports(config, got, str(run["root"] / "tta_eval"), 1)
  assert record["test_time_augmentation"] == {
      "conditions": [[f, s] for f, s in conditions], "max_length": 4}
  with pytest.raises(cfg.ConfigError, match="tta_shifts=8 --override=eval.tta_translate"):
    config.eval.tta_translate = 0.0
    config.eval.tta_shifts = 8
    config.validate()


def test_protocol_resolution_on_another_dataset(run, tmp_path):
  """A run evaluated with mars_matlab tested on a dataset without that protocol falls back
  to the dataset's own; asking for mars_matlab explicitly there is an error."""
  manifest = schema.read_manifest(run["data_a"])
  manifest["protocols"] = {"torchreid": manifest["protocols"]["torchreid"]}
  schema.write_manifest(str(tmp_path), manifest)
  config = cfg.build_config("nonlocal_i3d:synthetic", overrides=["eval.protocol=mars_matlab"],
                            data_dir=str(tmp_path))
  assert evaluation.resolve_protocol(config) == ("torchreid", "torchreid")
  with pytest.raises(ValueError, match="mars_matlab needs a MARS dataset"):
    evaluation.resolve_protocol(config, "mars_matlab")
  config.data.data_dir = run["data_a"]
  assert evaluation.resolve_protocol(config) == ("mars_matlab", "mars_matlab")


def test_split_flag_values():
  assert evaluate.parse_split(None) is None
  assert evaluate.parse_split("3") == 3 and evaluate.parse_split(2) == 2
  assert evaluate.parse_split("all") == "all"
  with pytest.raises(ValueError, match="expected a split number"):
    evaluate.parse_split("first")
  with pytest.raises(ValueError, match="start at 0"):
    evaluate.parse_split(-1)
