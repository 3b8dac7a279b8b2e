"""diversity_attention in the trainer, on tiny shapes: 2 replicas equal 1 with XLA (OIM table
included), a resumed run equals a straight one, the staged chain (baseline -> frozen spatial
stage) restores and freezes the backbone and carries the OIM table (not to another
dataset), mixed_bfloat16 trains, and the export equals the
evaluation features. Plus the full-size model: its parameter count against the breakdown in
the model's docstring, ImageNet ResNet-50 weights loaded from a file the test writes, and one
6 x 256 x 128 clip forward."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import diversity_attention as experiment
from tfreid import config as cfg
from tfreid.backbones import weights as weights_lib
from tfreid.data import reader
from tfreid.models import build_model, diversity_attention
from tfreid.serving import exporter
from tfreid.training import evaluation
from tfreid.training import trainer as trainer_lib

import data_fixtures
from trainer_fixtures import first_cpu_strategy, two_cpu_strategy

TINY = ["data.height=64", "data.width=32", "data.seq_len=3", "data.num_identities=4",
        "data.num_instances=2", "data.test_batch_size=8", "model.backbone.base_width=2",
        "model.backbone.block_counts=[1, 1, 1, 1]", "model.diversity_attention.num_parts=2",
        "model.diversity_attention.hidden_dim=4", "model.diversity_attention.embedding_dim=8",
        "trainer.epochs=1", "trainer.steps_per_epoch=3", "trainer.log_every_steps=1",
        "trainer.image_summary_every_steps=0", "trainer.eval_every_epochs=0",
        "trainer.checkpoint_every_steps=1000", "optimizer.learning_rate=0.01",
        "runtime.jit_compile=false"]


def tiny(data_dir, variant="synthetic", *overrides):
  name = f"diversity_attention:{variant}" if variant else "diversity_attention"
  return cfg.build_config(name, overrides=TINY + list(overrides), data_dir=str(data_dir))


@pytest.fixture(scope="module", name="data")
def fixture_data(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("drsa") / "data")
  data_fixtures.write_tiny_dataset(path, num_ids=6, tracklets_per_id=2, num_frames=(3, 9),
                                   height=32, width=16, num_test_ids=3, seed=1)
  return path


def _train(config, model_dir, strategy=None):
  keras.utils.set_random_seed(0)
  trainer = trainer_lib.Trainer(config, str(model_dir), strategy=strategy or first_cpu_strategy())
  return trainer, trainer.train()


def _oim_table(trainer):
  (term,) = [t for t in trainer.loss_terms if t.name == "oim"]
  return term.table.numpy()


def test_two_replicas_equal_one_with_xla(data, tmp_path):
  """The temporal stage (frozen backbone: BatchNorm in inference mode, so the step does not
  depend on how the batch is split): OIM + diversity, 3 steps, XLA on."""
  overrides = ["runtime.jit_compile=true",
               "model.diversity_attention.requires_init_checkpoint=false"]
  one, v1 = _train(tiny(data, "temporal", *overrides), tmp_path / "one", first_cpu_strategy())
  two, v2 = _train(tiny(data, "temporal", *overrides), tmp_path / "two", two_cpu_strategy())
  assert v1["diversity"] == pytest.approx(v2["diversity"], rel=1e-5)
  assert v1["oim"] == pytest.approx(v2["oim"], rel=1e-5)
  for a, b in zip(one.model.trainable_variables, two.model.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
  table = _oim_table(one)
  assert np.abs(table).sum() > 0
  np.testing.assert_allclose(_oim_table(two), table, rtol=1e-5, atol=1e-5)


def test_resumed_run_equals_straight_run_oim_table_included(data, tmp_path):
  straight, values = _train(tiny(data, "synthetic", "trainer.epochs=2"), tmp_path / "straight")
  assert {"oim", "diversity", "l2", "metrics/spatial_attention_peak",
          "metrics/temporal_attention_peak"} <= set(values)
  assert 1 / 2 <= values["metrics/spatial_attention_peak"] <= 1  # L = 2 cells here
  _train(tiny(data, "synthetic", "trainer.epochs=1"), tmp_path / "resumed")
  resumed, _ = _train(tiny(data, "synthetic", "trainer.epochs=2"), tmp_path / "resumed")
  assert int(resumed.global_step.numpy()) == 6
  for a, b in zip(straight.model.variables, resumed.model.variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(_oim_table(resumed), _oim_table(straight), rtol=1e-6, atol=1e-7)


def test_staged_chain_restores_then_freezes_the_backbone(data, tmp_path):
  """Stage (b) baseline, then stage (c) from its run: the backbone (kernels and BatchNorm
  statistics) is the baseline's and stays so; the attention layers train."""
  base, _ = _train(tiny(data, "baseline", "model.backbone.init=none",
                        "model.diversity_attention.num_parts=0"), tmp_path / "baseline")
  assert "attention_spatial" not in base.model(trainer_lib.dummy_inputs(base.config))
  spatial_config = tiny(data, "spatial", f"trainer.init_checkpoint={tmp_path / 'baseline'}")
  assert spatial_config.trainer.freeze == ["resnet2d"]
  keras.utils.set_random_seed(0)
  spatial = trainer_lib.Trainer(spatial_config, str(tmp_path / "spatial"),
                                strategy=first_cpu_strategy())
  assert spatial.frozen == ["resnet2d"]
  # The OIM lookup table of stage (b) carries over (same data, same identities).
  assert np.abs(_oim_table(base)).sum() > 0
  np.testing.assert_array_equal(_oim_table(spatial), _oim_table(base))
  backbone_before = [v.numpy().copy() for v in spatial.model.backbone.variables]
  for ours, theirs in zip(backbone_before, base.model.backbone.variables):
    np.testing.assert_array_equal(ours, theirs.numpy())  # restored from stage (b)
  attention_before = [v.numpy().copy() for v in spatial.model.spatial_attention.variables]
  values = spatial.train()
  assert values["diversity"] > 0
  moving = [v for v in spatial.model.backbone.variables if "moving" in v.path]
  assert moving and not any(v.trainable for v in spatial.model.backbone.variables)
  for before, after in zip(backbone_before, spatial.model.backbone.variables):
    np.testing.assert_array_equal(before, after.numpy())
  assert any(np.abs(b - a.numpy()).max() > 0 for b, a in
             zip(attention_before, spatial.model.spatial_attention.variables))
  # The embedding FC of the baseline (D -> E) does not fit K * D -> E: not restored.
  assert spatial.model.embed.kernel.shape[0] == 2 * base.model.embed.kernel.shape[0]


def test_init_checkpoint_oim_table_only_for_the_same_identities(data, tmp_path, caplog):
  """trainer.init_checkpoint restores the OIM table when the source run trained on the same
  data_dir and split (its config.yaml says so) and the shapes match; fine-tuning on another
  dataset (another identity count, or the same count in another data_dir) starts from a
  zero table with a warning, and trains."""
  source_dir = tmp_path / "source"
  source, _ = _train(tiny(data, "synthetic", "trainer.steps_per_epoch=1"), source_dir)
  table = _oim_table(source)
  assert table.shape == (6, 8) and np.abs(table).sum() > 0

  def initialised(data_dir, strategy=None):
    keras.utils.set_random_seed(0)
    config = tiny(data_dir, "synthetic", f"trainer.init_checkpoint={source_dir}")
    return trainer_lib.Trainer(config, str(tmp_path / f"run{len(list(tmp_path.iterdir()))}"),
                               strategy=strategy or first_cpu_strategy())

  # No config.yaml beside the checkpoint: the shapes decide. Two replicas: every copy of
  # the mirrored table is restored.
  np.testing.assert_array_equal(_oim_table(initialised(data)), table)
  (term,) = [t for t in initialised(data, two_cpu_strategy()).loss_terms if t.name == "oim"]
  for copy in term.table.values:
    np.testing.assert_array_equal(copy.numpy(), table)
  other_count = str(tmp_path / "other_count")
  data_fixtures.write_tiny_dataset(other_count, num_ids=4, tracklets_per_id=2,
                                   num_frames=(3, 9), height=32, width=16, seed=2)
  caplog.clear()
  with caplog.at_level("WARNING"):
    finetuned = initialised(other_count)
  assert "checkpoint shape [6, 8], this run's shape [4, 8]" in caplog.text
  np.testing.assert_array_equal(_oim_table(finetuned), np.zeros((4, 8), np.float32))
  values = finetuned.train()
  assert np.isfinite(values["oim"]) and np.abs(_oim_table(finetuned)).sum() > 0

  # With the source run's config.yaml: the same data_dir and split restores, another
  # data_dir with as many identities does not (its labels name other people).
  cfg.save_config(source.config, str(source_dir / "config.yaml"))
  np.testing.assert_array_equal(_oim_table(initialised(data)), table)
  same_count = str(tmp_path / "same_count")
  data_fixtures.write_tiny_dataset(same_count, num_ids=6, tracklets_per_id=2,
                                   num_frames=(3, 9), height=32, width=16, seed=3)
  caplog.clear()
  with caplog.at_level("WARNING"):
    other = initialised(same_count)
  assert "Not restoring the loss-term state (oim)" in caplog.text
  assert "its rows belong to other identities" in caplog.text
  np.testing.assert_array_equal(_oim_table(other), np.zeros((6, 8), np.float32))


def test_mixed_bfloat16_trains(data, tmp_path, float32_policy):
  del float32_policy
  trainer, values = _train(tiny(data, "synthetic", "runtime.mixed_precision=mixed_bfloat16"),
                  tmp_path / "bf16")
  assert all(np.isfinite(v) for k, v in values.items() if not k.startswith("metrics/"))
  out = trainer.model(trainer_lib.dummy_inputs(trainer.config), training=False)
  assert out["attention_spatial"].dtype == tf.float32


@pytest.fixture(name="float32_policy")
def fixture_float32_policy():
  yield
  keras.mixed_precision.set_global_policy("float32")


def test_export_equals_evaluation_features(data, tmp_path):
  config = tiny(data, "synthetic", "trainer.steps_per_epoch=2")
  model_dir = tmp_path / "run"
  trainer, _ = _train(config, model_dir)
  cfg.save_config(config, str(model_dir / "config.yaml"))
  features, index = evaluation.extract_features(config, trainer.model, "query", None, 0)
  path = exporter.export_run(str(model_dir), str(tmp_path / "export"))
  loaded = tf.saved_model.load(path)
  query = reader.load_partition(str(data), "query")
  records = reader.RecordReader(query)
  got = []
  for position in range(len(index.pids)):
    arrays, _ = records.tracklet(position)
    frames = np.stack([tf.io.decode_image(f, channels=3).numpy() for f in arrays.frames])
    got.append(loaded.signatures["embed_tracklet"](frames=tf.constant(frames))["embedding"])
  np.testing.assert_allclose(np.concatenate([g.numpy() for g in got]), features["embedding"],
                             rtol=1e-5, atol=1e-5)
  clip = np.zeros((2, 3, 64, 32, 3), np.uint8)
  served = loaded.signatures["serving_default"](clips=tf.constant(clip))["embedding"]
  np.testing.assert_allclose(np.linalg.norm(served.numpy(), axis=-1), 1.0, rtol=1e-5)


def _resnet50_params():
  """ResNet-50 without top, bias-free convolutions, BatchNorm = 4 numbers per channel."""
  total, channels = 7 * 7 * 3 * 64 + 4 * 64, 64
  for stage, count in enumerate((3, 4, 6, 3)):
    w = 64 * 2 ** stage
    for index in range(count):
      if index == 0:
        total += channels * 4 * w + 4 * 4 * w
      total += channels * w + 9 * w * w + w * 4 * w + 4 * (w + w + 4 * w)
      channels = 4 * w
  return total


def test_paper_configuration_size_imagenet_weights_and_forward(tmp_path):
  """Parameter count from the docstring's breakdown; the backbone loads a Keras ResNet-50
  weights file (the format of the ImageNet weights) written here; one 6 x 256 x 128 clip."""
  keras.utils.set_random_seed(0)
  source = keras.applications.ResNet50(weights=None, include_top=False)
  path = str(tmp_path / "resnet50_imagenet.weights.h5")
  source.save_weights(path)
  config = experiment.get_config("")
  config.model.backbone.weights_path = path
  model = build_model(config.validate(), num_classes=625)
  k, d, big_d, n, e = 6, 256, 2048, 6, 128
  breakdown = {"resnet50": _resnet50_params(),
               "spatial": big_d * k * d + k * d + k * d + k,
               "enhancement": n * n + n + big_d * big_d + big_d,
               "temporal": k * big_d + k,
               "embed": k * big_d * e + e}
  assert breakdown == {"resnet50": 23_561_152, "spatial": 3_148_806,
                       "enhancement": 4_196_394, "temporal": 12_294, "embed": 1_572_992}
  assert model.count_params() == sum(breakdown.values()) == \
      diversity_attention.PAPER_CONFIG_PARAMS
  for name in ("conv1_conv", "conv4_block3_2_conv", "conv5_block3_3_conv"):
    np.testing.assert_array_equal(model.backbone.get_layer(name).kernel.numpy(),
                                  source.get_layer(name).kernel.numpy())
  with pytest.raises(weights_lib.WeightsError, match="does not exist"):
    config.model.backbone.weights_path = str(tmp_path / "missing.h5")
    build_model(config, num_classes=625)

  clip = np.random.default_rng(0).integers(0, 256, (1, 6, 256, 128, 3), dtype=np.uint8)
  start = time.perf_counter()
  out = model({"clips": clip}, training=False)
  seconds = time.perf_counter() - start
  assert {k: tuple(v.shape) for k, v in out.items()} == {
      "attention_spatial": (1, 6, 6, 8, 4), "attention_temporal": (1, 6, 6),
      "embedding": (1, 128), "features": (1, 12288)}
  assert all(np.isfinite(v.numpy()).all() for v in out.values())
  print(f"paper-size forward of one 6x256x128 clip: {seconds:.2f} s")


def test_config_checks_name_the_key(data):
  with pytest.raises(cfg.ConfigError, match="last_stride=2"):
    tiny(data, "synthetic", "model.backbone.last_stride=1")
  with pytest.raises(cfg.ConfigError, match="temporal='sum'"):
    tiny(data, "synthetic", "model.diversity_attention.temporal=sum")
  with pytest.raises(cfg.ConfigError, match="test_seq_len"):
    tiny(data, "synthetic", "data.test_seq_len=5")
  with pytest.raises(cfg.ConfigError, match="variant='kl'"):
    tiny(data, "synthetic", "losses.diversity.variant=kl")
  with pytest.raises(cfg.ConfigError, match="num_part.*Did you mean 'num_parts'"):
    tiny(data, "synthetic", "model.diversity_attention.num_part=3")
  for variant in ("spatial", "temporal", "k4", "maxpool", "ilidsvid"):
    with pytest.raises(cfg.ConfigError, match="trainer.init_checkpoint=DIR"):
      build_model(tiny(data, variant), num_classes=3)
  for variant in experiment.VARIANTS:
    c = experiment.get_config(variant)
    assert c.data.train_sampler == "restricted_random" and c.data.test_sampler == "chunk_first"
  assert experiment.get_config("k4").model.diversity_attention.num_parts == 4
  assert experiment.get_config("spatial_lin").losses.diversity.variant == "lin"
  assert experiment.get_config("maxpool").model.diversity_attention.temporal == "max"
  assert experiment.get_config("spatial_noreg").losses.diversity.weight == 0
  assert experiment.get_config("").trainer.freeze == []
