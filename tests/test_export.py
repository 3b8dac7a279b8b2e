"""SavedModel export: the CLI, the signatures against the Keras model and the evaluation
feature, saved_model_cli, a REST request body, input errors, the learned-distance path.

One tiny nonlocal_i3d run (random weights, BatchNorm statistics calibrated on one batch so
embeddings are O(1)) is exported once by the CLI; a fresh Python process loads the
SavedModel and runs every signature on inputs this file writes, and the numbers are
compared here with the Keras model and with `tfreid.training.evaluation.extract_features`.
"""

import copy
import json
import os
import subprocess
import sys

import keras
from keras import ops
import numpy as np
import pytest
import tensorflow as tf
import yaml

from tfreid import config as cfg
from tfreid import serving
from tfreid.data import reader
from tfreid.models import build_model
from tfreid.training import evaluation
from tfreid.training import optimizers
from tfreid.training import trainer

import data_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 3
TINY = ["data.height=32", "data.width=16", f"data.seq_len={T}", "data.num_identities=2",
        "data.num_instances=2", "data.test_batch_size=4", "model.backbone.base_width=4",
        "model.backbone.block_counts=[1, 1, 1, 1]",
        "model.backbone.nonlocal_blocks.blocks_per_stage=[0, 1, 1, 0]",
        "model.head.embedding_dim=8", "export.tracklet_batch_size=2"]
# Frames of the tiny dataset are 40x20: every signature resizes them to 32x16.
FRAME_H, FRAME_W = 40, 20
STEP = 7
# Float32 tolerance for embeddings of magnitude O(1): the same clips in a differently
# composed batch differ by a few ulps.
ATOL = 1e-5


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)


def _nearest_resize(frames, height, width):
  """Independent numpy version of the test pipeline's resize (pixel centres at i + 1/2)."""
  h, w = frames.shape[-3], frames.shape[-2]
  rows = np.floor((np.arange(height) + 0.5) * h / height).astype(int)
  cols = np.floor((np.arange(width) + 0.5) * w / width).astype(int)
  return frames[..., rows, :, :][..., cols, :]


def _dense_clips(num_frames, seq_len):
  """Independent numpy version of the dense test clips (last clip padded cyclically)."""
  clips = []
  for start in range(0, num_frames, seq_len):
    m = min(num_frames - start, seq_len)
    clips.append([start + (i % m) for i in range(seq_len)])
  return np.array(clips)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A training directory: config.yaml, checkpoint ckpt-7, eval/metrics.json."""
  root = tmp_path_factory.mktemp("export")
  data_dir = str(root / "data")
  # 3 training identities (the export reads the classifier size from the checkpoint); query
  # tracklets of 7, 8, 6 and 1 frames.
  data_fixtures.write_tiny_dataset(data_dir, num_ids=3, tracklets_per_id=2, num_frames=(1, 8),
                                   height=FRAME_H, width=FRAME_W, seed=2, num_test_ids=4)
  config = cfg.build_config("nonlocal_i3d:synthetic", overrides=TINY, data_dir=data_dir)
  num_classes = reader.load_partition(data_dir, "train").num_classes
  keras.utils.set_random_seed(0)
  model = build_model(config, num_classes)
  # Moving statistics = the statistics of one batch (momentum 0 for one training pass).
  norms = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
  assert norms
  for layer in norms:
    layer.momentum = 0.0
  rng = np.random.default_rng(0)
  model({"clips": rng.integers(0, 256, (8, T, 32, 16, 3), np.uint8)}, training=True)
  for layer in norms:
    layer.momentum = 0.99
  model_dir = str(root / "model")
  cfg.save_config(config, os.path.join(model_dir, "config.yaml"))
  # Laid out as the trainer's checkpoints are: the model with a built optimizer (which
  # holds the shortest path to each trainable variable), the step and the RNG states.
  optimizer = optimizers.build_optimizer(config, steps_per_epoch=1)
  optimizer.build(model.trainable_variables)
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                   global_step=tf.Variable(STEP, dtype=tf.int64),
                                   rng=trainer.seed_generator_states(model))
  tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=1).save(checkpoint_number=STEP)
  metrics = {"rank1": 0.5, "rank5": 0.75, "rank10": 1.0, "rank20": 1.0, "mAP": 0.625,
             "protocol": "torchreid", "checkpoint_step": STEP, "num_valid_queries": 4}
  os.makedirs(os.path.join(model_dir, "eval"))
  with open(os.path.join(model_dir, "eval", "metrics.json"), "w") as f:
    json.dump(metrics, f)
  return {"root": root, "data_dir": data_dir, "model_dir": model_dir, "config": config,
          "model": model, "metrics": metrics, "num_classes": num_classes}


def _start(args, **kwargs):
  return subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kwargs)


def _finish(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


@pytest.fixture(scope="module")
def exported(run):
  """`python -m tfreid.export` into an empty export dir -> OUT/1; meanwhile the CLI on a
  directory without config.yaml and on one without a checkpoint."""
  root = run["root"]
  out = str(root / "serving")
  cli = [sys.executable, "-m", "tfreid.export"]
  export = _start(cli + [f"--model_dir={run['model_dir']}", f"--export_dir={out}"])
  (root / "no_config").mkdir()
  (root / "no_ckpt").mkdir()
  cfg.save_config(run["config"], str(root / "no_ckpt" / "config.yaml"))
  failing = {name: _start(cli + [f"--model_dir={root / name}", f"--export_dir={root / 'x'}"])
             for name in ("no_config", "no_ckpt")}
  code, stdout, stderr = _finish(export)
  assert code == 0, stderr[-3000:]
  path = os.path.join(out, "1")
  assert stdout.strip().splitlines()[-1] == path
  return {"path": path, "errors": {name: _finish(p) for name, p in failing.items()}}


LOADER = r'''
"""Loads the SavedModel in a fresh process and runs its signatures on the given inputs."""
import json
import sys

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from tfreid import serving

export_path, inputs_path, rest_path, out_path = sys.argv[1:5]
loaded = tf.saved_model.load(export_path)
serve = loaded.signatures["serving_default"]
embed = loaded.signatures["embed_tracklet"]
data = dict(np.load(inputs_path))
results, messages = {}, {}
for key in ("clips", "big_clips"):
  results[key] = serve(clips=tf.constant(data[key]))["embedding"].numpy()
for key in data:
  if key.startswith("tracklet_"):
    results[key] = embed(frames=tf.constant(data[key]))["embedding"].numpy()

# The REST bodies: parse JSON -> uint8 array -> signature, as TF Serving does.
with open(rest_path) as f:
  bodies = json.load(f)
row, col = bodies["row"], bodies["columnar"]
results["rest_row"] = loaded.signatures[row["signature_name"]](
    clips=tf.constant(np.asarray(row["instances"], np.uint8)))["embedding"].numpy()
results["rest_columnar"] = loaded.signatures[col["signature_name"]](
    clips=tf.constant(np.asarray(col["inputs"]["clips"], np.uint8)))["embedding"].numpy()
results["rest_direct"] = serve(clips=tf.constant(data["rest_clips"]))["embedding"].numpy()

bad = {"channels": np.zeros((1, 3, 8, 4, 4), np.uint8),
       "rank": np.zeros((3, 8, 4, 3), np.uint8),
       "seq_len": np.zeros((1, 5, 8, 4, 3), np.uint8)}
for name, value in dict(bad, dtype=np.zeros((1, 3, 8, 4, 3), np.float32)).items():
  # numpy arrays meet the Python binding's check of the declared spec; tensors go straight
  # to the graph and meet its assertions.
  for kind, arg in (("numpy", value), ("tensor", tf.constant(value))):
    try:
      serve(clips=arg)
      messages[f"{kind}_{name}"] = "no error"
    except (TypeError, ValueError, tf.errors.InvalidArgumentError) as e:
      messages[f"{kind}_{name}"] = f"{type(e).__name__}: {str(e)[:2000]}"
try:
  serving.validate_inputs(serve, {"clips": bad["channels"]}, "serving_default")
except ValueError as e:
  messages["validate_loaded"] = str(e)
try:
  embed(frames=tf.zeros([0, 8, 4, 3], tf.uint8))
  messages["empty_tracklet"] = "no error"
except tf.errors.InvalidArgumentError as e:
  messages["empty_tracklet"] = e.message

# The graph run by the C++ runtime with the tensors fed directly (how TF Serving runs a
# signature: no Python-side check of the declared shape, only the assertions in the graph).
with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
  meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_path)
  signature = meta.signature_def["serving_default"]
  options = config_pb2.CallableOptions()
  options.feed.append(signature.inputs["clips"].name)
  options.fetch.append(signature.outputs["embedding"].name)
  call = session._make_callable_from_options(options)  # pylint: disable=protected-access
  results["session_clips"] = call(data["clips"])[0]
  for name, value in bad.items():
    try:
      call(value)
      messages["runtime_" + name] = "no error"
    except tf.errors.InvalidArgumentError as e:
      messages["runtime_" + name] = e.message
np.savez(out_path, **results)
with open(out_path + ".json", "w") as f:
  json.dump(messages, f)
'''


@pytest.fixture(scope="module")
def served(run, exported):
  """Outputs of the loaded SavedModel (fresh process) and the inputs they came from, the
  `saved_model_cli show --all` listing, and the references computed meanwhile here."""
  root = run["root"]
  rng = np.random.default_rng(1)
  index = reader.load_partition(run["data_dir"], "query")
  inputs = {"clips": rng.integers(0, 256, (3, T, 32, 16, 3), np.uint8),
            "big_clips": rng.integers(0, 256, (2, T, FRAME_H, FRAME_W, 3), np.uint8),
            "rest_clips": rng.integers(0, 256, (1, T, FRAME_H, FRAME_W, 3), np.uint8)}
  for i, n in enumerate(index.num_frames):
    inputs[f"tracklet_{i}"] = evaluation.read_tracklet_frames(index, i, int(n))
  np.savez(root / "inputs.npz", **inputs)
  clip = inputs["rest_clips"]
  bodies = {"row": {"signature_name": "serving_default", "instances": clip.tolist()},
            "columnar": {"signature_name": "serving_default",
                         "inputs": {"clips": clip.tolist()}}}
  with open(root / "rest.json", "w") as f:
    json.dump(bodies, f)
  (root / "loader.py").write_text(LOADER)
  loader = _start([sys.executable, str(root / "loader.py"), exported["path"],
                   str(root / "inputs.npz"), str(root / "rest.json"),
                   str(root / "outputs.npz")])
  cli = _start([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show",
                "--all", "--dir", exported["path"]])
  # References, while the subprocesses run.
  model = run["model"]
  references = {
      "clips": model({"clips": inputs["clips"]}, training=False)["embedding"].numpy(),
      "big_clips": model({"clips": _nearest_resize(inputs["big_clips"], 32, 16)},
                         training=False)["embedding"].numpy()}
  references["features"], _ = evaluation.extract_features(run["config"], model, "query",
                                                          "torchreid")
  code, _, stderr = _finish(loader)
  assert code == 0, stderr[-3000:]
  with open(root / "outputs.npz.json") as f:
    messages = json.load(f)
  return {"inputs": inputs, "outputs": dict(np.load(root / "outputs.npz")),
          "messages": messages, "index": index, "references": references,
          "saved_model_cli": _finish(cli)}


def test_cli_writes_a_versioned_savedmodel_with_assets(run, exported):
  exported = exported["path"]
  assert os.path.exists(os.path.join(exported, "saved_model.pb"))
  assert os.path.isdir(os.path.join(exported, "variables"))
  assert sorted(os.listdir(os.path.dirname(exported))) == ["1"]  # no staging leftovers
  with open(os.path.join(exported, "assets", "config.yaml")) as f:
    assert yaml.safe_load(f) == cfg.to_dict(run["config"])
  with open(os.path.join(exported, "assets", "model_card.json")) as f:
    card = json.load(f)
  assert card["experiment"] == "nonlocal_i3d:synthetic"
  assert card["method"] == "nonlocal_i3d"
  assert card["dataset"]["name"] == "folder"
  assert card["dataset"]["num_train_identities"] == run["num_classes"]
  assert card["protocol"] == "torchreid"
  assert card["checkpoint"]["step"] == STEP
  assert card["checkpoint"]["path"].endswith(f"ckpt-{STEP}")
  assert card["metrics"] == dict(run["metrics"], of_exported_checkpoint=True)
  assert (card["input"]["height"], card["input"]["width"], card["input"]["seq_len"]) == (32, 16, T)
  assert sorted(card["signatures"]) == ["embed_tracklet", "serving_default"]
  clips = card["signatures"]["serving_default"]["inputs"]["clips"]
  assert clips == {"dtype": "uint8", "shape": [-1, T, -1, -1, 3], "spec": "uint8 [B, 3, H, W, 3]"}
  assert card["signatures"]["embed_tracklet"]["outputs"]["embedding"]["shape"] == [1, 8]


def test_cli_errors_exit_2(exported):
  code, _, err = exported["errors"]["no_config"]
  assert code == 2
  assert "config.yaml does not exist" in err and "not a training directory" in err
  code, _, err = exported["errors"]["no_ckpt"]
  assert code == 2
  assert "no checkpoint in" in err and "train first" in err


def test_versions_and_mismatched_checkpoint(run, tmp_path):
  base = tmp_path / "versions"
  assert serving.resolve_version(str(base), 0) == 1
  for name in ("1", "3", "tmp", ".tmp-4-x"):
    (base / name).mkdir(parents=True)
  assert serving.resolve_version(str(base), 0) == 4
  assert serving.resolve_version(str(base), 2) == 2
  with pytest.raises(serving.ExportError, match=r"3 already exists.*next free one \(4\)"):
    serving.resolve_version(str(base), 3)
  # A checkpoint of another configuration is refused, not half restored.
  other = tmp_path / "other"
  other.mkdir()
  cfg.save_config(cfg.build_config("nonlocal_i3d:synthetic",
                                   overrides=TINY + ["model.head.embedding_dim=6"],
                                   data_dir=run["data_dir"]), str(other / "config.yaml"))
  ckpt = os.path.join(run["model_dir"], f"ckpt-{STEP}")
  with pytest.raises(serving.ExportError, match="does not match the run's config.yaml"):
    serving.load_run(str(other), ckpt)


def test_export_without_the_dataset(run, tmp_path):
  """A training directory moved away from its dataset restores from the checkpoint alone."""
  moved = tmp_path / "moved"
  moved.mkdir()
  config = cfg.load_config(os.path.join(run["model_dir"], "config.yaml"))
  config.data.data_dir = str(tmp_path / "gone")
  cfg.save_config(config, str(moved / "config.yaml"))
  restored = serving.load_run(str(moved), os.path.join(run["model_dir"], f"ckpt-{STEP}"))
  assert restored.num_classes == run["num_classes"] == 3
  assert restored.step == STEP
  clips = np.random.default_rng(3).integers(0, 256, (2, T, 32, 16, 3), np.uint8)
  for key in ("embedding", "logits"):
    np.testing.assert_array_equal(restored.model({"clips": clips}, training=False)[key],
                                  run["model"]({"clips": clips}, training=False)[key])


def test_savedmodel_matches_keras_model(served):
  outputs, references = served["outputs"], served["references"]
  assert np.abs(outputs["clips"] - references["clips"]).max() < ATOL
  # Frames of another size: resized inside like the test pipeline (numpy reference).
  assert np.abs(outputs["big_clips"] - references["big_clips"]).max() < ATOL
  # The same graph run by the C++ runtime with direct feeds (as TF Serving runs it).
  np.testing.assert_array_equal(outputs["session_clips"], outputs["clips"])


def test_embed_tracklet_equals_the_evaluation_feature(served):
  lengths = served["index"].num_frames
  # Tracklets shorter than T, of lengths that are not multiples of T, and with more clips
  # than one batch of export.tracklet_batch_size (= 2).
  assert (lengths < T).any() and ((lengths > T) & (lengths % T != 0)).any()
  assert (np.ceil(lengths / T) > 2).any()
  features = served["references"]["features"]["embedding"]
  assert np.abs(features).max() > 0.1
  for i in range(len(lengths)):
    got = served["outputs"][f"tracklet_{i}"]
    assert got.shape == (1, 8)
    assert np.abs(got[0] - features[i]).max() < ATOL, (i, lengths[i])


def test_strided_test_clips_agree_between_evaluation_and_embed_tracklet(run):
  """data.test_sample_stride reaches both the evaluation pipeline and embed_tracklet, and
  both equal the model's mean over numpy-cut clips of frames 2 apart."""
  config = copy.deepcopy(run["config"])
  config.data.test_sample_stride = 2
  model = run["model"]
  features, _ = evaluation.extract_features(config, model, "query", "torchreid")
  module = serving.export_module_for(config, model)
  assert module.test_stride == 2
  index = reader.load_partition(run["data_dir"], "query")
  assert (index.num_frames > 2 * T).any()
  for i, n in enumerate(index.num_frames):
    frames = evaluation.read_tracklet_frames(index, i, int(n))
    got = module.embed_tracklet(tf.constant(frames))["embedding"].numpy()[0]
    clips = []
    for r in range(2):
      own = list(range(r, int(n), 2))
      for k in range(0, len(own), T):
        part = own[k:k + T]
        clips.append([part[j % len(part)] for j in range(T)])
    resized = _nearest_resize(frames, 32, 16)[np.array(clips)]
    reference = model({"clips": resized}, training=False)["embedding"].numpy().mean(0)
    assert np.abs(got - reference).max() < ATOL, (i, n)
    assert np.abs(features["embedding"][i] - reference).max() < ATOL, (i, n)


def test_saved_model_cli_lists_the_signatures(served):
  code, text, err = served["saved_model_cli"]
  assert code == 0, err[-2000:]
  blocks = {}
  for block in text.split("signature_def[")[1:]:
    name = block.split("]")[0].strip("'")
    blocks[name] = " ".join(block.split())
  assert set(blocks) >= {"serving_default", "embed_tracklet"}
  assert "distance" not in blocks  # nonlocal_i3d has no learned metric
  assert ("inputs['clips'] tensor_info: dtype: DT_UINT8 shape: (-1, 3, -1, -1, 3)"
          in blocks["serving_default"])
  assert ("outputs['embedding'] tensor_info: dtype: DT_FLOAT shape: (-1, 8)"
          in blocks["serving_default"])
  assert ("inputs['frames'] tensor_info: dtype: DT_UINT8 shape: (-1, -1, -1, 3)"
          in blocks["embed_tracklet"])
  assert ("outputs['embedding'] tensor_info: dtype: DT_FLOAT shape: (1, 8)"
          in blocks["embed_tracklet"])


def test_rest_predict_bodies_give_the_direct_result(served):
  outputs = served["outputs"]
  assert outputs["rest_direct"].shape == (1, 8)
  np.testing.assert_array_equal(outputs["rest_row"], outputs["rest_direct"])
  np.testing.assert_array_equal(outputs["rest_columnar"], outputs["rest_direct"])


def test_wrong_inputs_fail_naming_the_expected_spec(served):
  # TensorFlow prints the assertion message with backslash-escaped quotes.
  messages = {k: v.replace("\\'", "'") for k, v in served["messages"].items()}
  declared = "TensorSpec(shape=(None, 3, None, None, 3), dtype=tf.uint8, name='clips')"
  expected = "input 'clips' must be uint8 [B, 3, H, W, 3]"
  for name in ("channels", "rank", "seq_len"):
    assert declared in messages[f"numpy_{name}"], messages[f"numpy_{name}"]
  # (A float numpy array is cast to uint8 by the binding without a word: validate_inputs,
  # below, is what catches it.)
  assert "expected to be a uint8 tensor but is a float tensor" in messages["tensor_dtype"]
  # In the graph: what tensors fed to a loaded signature, and to the C++ runtime of TF
  # Serving ("runtime_"), meet. Rank, T and channels are checked when the graph runs.
  for kind in ("tensor", "runtime"):
    assert "another rank" in messages[f"{kind}_rank"], messages[f"{kind}_rank"]
    assert "another size on axis 1 (T)" in messages[f"{kind}_seq_len"]
    assert "another size on axis 4 (C)" in messages[f"{kind}_channels"]
    for name in ("rank", "seq_len", "channels"):
      assert expected in messages[f"{kind}_{name}"]
  assert "input 'frames' must be uint8 [N, H, W, 3]" in messages["empty_tracklet"]
  assert "empty axis 0" in messages["empty_tracklet"]
  assert "must be uint8 [B, 3, H, W, 3]" in messages["validate_loaded"]


def test_validate_inputs():
  specs = {"clips": tf.TensorSpec([None, T, None, None, 3], tf.uint8, name="clips")}
  good = np.zeros((2, T, 8, 4, 3), np.uint8)
  arrays = serving.validate_inputs(specs, {"clips": good}, "serving_default")
  assert arrays["clips"] is good
  cases = [
      (TypeError, good.astype(np.float32), r"'clips' must be uint8 \[B, 3, H, W, 3\].*got "
       r"dtype float32\. Pass the raw 0\.\.255 pixels as np\.uint8"),
      (ValueError, good[0], r"must be uint8 \[B, 3, H, W, 3\].*got rank 4"),
      (ValueError, np.zeros((2, T, 8, 4, 1), np.uint8), r"axis 4 must be 3"),
      (ValueError, np.zeros((2, T + 1, 8, 4, 3), np.uint8), r"axis 1 must be 3"),
      (ValueError, np.zeros((0, T, 8, 4, 3), np.uint8), r"empty array"),
  ]
  for error, value, pattern in cases:
    with pytest.raises(error, match=pattern):
      serving.validate_inputs(specs, {"clips": value}, "serving_default")
  with pytest.raises(ValueError, match=r"takes inputs \{clips: uint8 \[B, 3, H, W, 3\]\}; "
                     r"missing \['clips'\], unknown \['frames'\]"):
    serving.validate_inputs(specs, {"frames": good}, "serving_default")


class TinyMetricModel(keras.Model):
  """Clip mean colour -> embedding and two 3-d part features; a learned pairwise metric:
  d(q, g) = |q_e - g_e| + sum_r softplus(w_r) |q_r - g_r| (Euclidean norms)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.embed = keras.layers.Dense(4, name="embed")
    self.part = keras.layers.Dense(6, name="part")
    self.classifier = keras.layers.Dense(2, name="classifier")
    self.part_weights = self.add_weight(shape=(2,), initializer="random_normal",
                                        name="part_weights")

  def call(self, inputs, training=False):
    pooled = ops.mean(ops.cast(inputs["clips"], "float32") / 255.0, axis=(1, 2, 3))
    embedding = self.embed(pooled)
    return {"embedding": embedding, "parts": ops.reshape(self.part(pooled), (-1, 2, 3)),
            "logits": self.classifier(embedding)}

  def pairwise_distance(self, query, gallery):
    def norm(q, g):
      return ops.sqrt(ops.sum((q[:, None] - g[None]) ** 2, axis=-1))
    parts = norm(query["parts"], gallery["parts"])  # [Q, G, 2]
    return norm(query["embedding"], gallery["embedding"]) + ops.sum(
        parts * ops.softplus(self.part_weights), axis=-1)


def test_distance_signature_for_a_learned_metric(tmp_path):
  keras.utils.set_random_seed(1)
  model = TinyMetricModel()
  module = serving.ReidExportModule(model, height=8, width=4, seq_len=2, tracklet_batch_size=2)
  assert sorted(module.get_signatures()) == ["distance", "embed_tracklet", "serving_default"]
  path = str(tmp_path / "1")
  tf.saved_model.save(module, path, signatures=module.get_signatures())
  loaded = tf.saved_model.load(path)
  distance = loaded.signatures["distance"]
  assert sorted(distance.structured_input_signature[1]) == [
      "gallery_embedding", "gallery_parts", "query_embedding", "query_parts"]

  # Reference: the model re-implemented in numpy on dense clips of resized frames.
  w_e, b_e = (v.numpy() for v in model.embed.weights)
  w_p, b_p = (v.numpy() for v in model.part.weights)

  def reference(frames):
    clips = _nearest_resize(frames, 8, 4)[_dense_clips(len(frames), 2)]
    pooled = (clips.astype(np.float64) / 255.0).mean(axis=(1, 2, 3))
    return {"embedding": (pooled @ w_e + b_e).mean(0),
            "parts": (pooled @ w_p + b_p).reshape(-1, 2, 3).mean(0)}

  rng = np.random.default_rng(2)
  tracklets = [rng.integers(0, 256, (n, 10, 6, 3), np.uint8) for n in (1, 3, 4, 5, 7)]
  outs = [loaded.signatures["embed_tracklet"](frames=tf.constant(t)) for t in tracklets]
  for out, frames in zip(outs, tracklets):
    ref = reference(frames)
    assert sorted(out) == ["embedding", "parts"]
    for key in ref:
      assert np.abs(out[key].numpy()[0] - ref[key]).max() < 1e-6
  query = {k: tf.concat([o[k] for o in outs[:2]], 0) for k in ("embedding", "parts")}
  gallery = {k: tf.concat([o[k] for o in outs[2:]], 0) for k in ("embedding", "parts")}
  got = distance(**{f"query_{k}": v for k, v in query.items()},
                 **{f"gallery_{k}": v for k, v in gallery.items()})["distance"].numpy()
  q = {k: v.numpy().astype(np.float64) for k, v in query.items()}
  g = {k: v.numpy().astype(np.float64) for k, v in gallery.items()}
  softplus = np.log1p(np.exp(model.part_weights.numpy().astype(np.float64)))
  expected = np.zeros((2, 3))
  for i in range(2):
    for j in range(3):
      expected[i, j] = np.linalg.norm(q["embedding"][i] - g["embedding"][j]) + sum(
          softplus[r] * np.linalg.norm(q["parts"][i, r] - g["parts"][j, r]) for r in range(2))
  assert got.shape == (2, 3)
  assert np.abs(got - expected).max() < 1e-5
