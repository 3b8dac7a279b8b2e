"""`python -m tfreid.splits`: training and evaluating chosen splits of a 10-split dataset,
mean and sample std over splits, resuming, and cross-dataset testing on every split.

Datasets: a tiny iLIDS-VID (8 persons, 3 splits of 4 train / 4 test persons) and a tiny
PRID-2011 (6 persons, 2 splits of 3 / 3), both written in the raw layouts and converted by
`data_pipelines.convert`. The driver does not depend on the model, so a small plain Keras
model (one convolution, the house output dict) stands in for nonlocal_i3d to keep the
file fast; the real model's evaluation is tested in test_evaluate_cli.py.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import tfreid.models
from data_pipelines import convert
from tfreid import config as cfg
from tfreid import evaluate
from tfreid import splits as splits_driver
from tfreid.metrics import aggregate_splits
from tfreid.training import trainer as trainer_lib

import convert_fakes
import data_fixtures
from trainer_fixtures import PlainModel

KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP")
TINY = ["data.height=32", "data.width=16", "data.seq_len=2", "data.num_identities=4",
        "data.num_instances=2", "data.test_batch_size=8", "model.head.embedding_dim=8",
        "trainer.epochs=2", "trainer.log_every_steps=1", "runtime.jit_compile=false",
        "eval.num_rank_lists=2"]
EXPERIMENT = "nonlocal_i3d:synthetic"


class SpyTrainer(trainer_lib.Trainer):
  """The trainer, recording every instance (split, checkpoint it resumed from)."""
  made = []

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.initial_weights = {v.path: v.numpy() for v in self.model.weights}
    SpyTrainer.made.append(self)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("splits")
  ls_set = convert_fakes.write_ilidsvid(str(root / "ilids_raw"), num_persons=8, frames=(3, 2),
                                        num_splits=3, seed=4)
  convert.convert("ilidsvid", str(root / "ilids_raw"), str(root / "ilids"), progress=False)
  persons = [f"person_{i:04d}" for i in range(1, 7)]
  convert_fakes.write_prid(str(root / "prid_raw"),
                           {"cam_a": {i: 3 for i in range(1, 7)},
                            "cam_b": {i: 2 + i % 2 for i in range(1, 7)}},
                           splits=[{"train": persons[:3], "test": persons[3:]},
                                   {"train": persons[3:], "test": persons[:3]}])
  convert.convert("prid2011", str(root / "prid_raw"), str(root / "prid"), progress=False)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(trainer_lib, "build_model", lambda config, n: PlainModel(n))
    patch.setattr(tfreid.models, "build_model", lambda config, n: PlainModel(n))
    patch.setattr(trainer_lib, "Trainer", SpyTrainer)
    yield {"root": root, "ilids": str(root / "ilids"), "prid": str(root / "prid"),
           "ls_set": ls_set, "model_dir": str(root / "runs")}


@pytest.fixture(scope="module")
def driven(env):
  """Split 2 half-trained (1 of 2 epochs) beforehand; then the driver on splits 0 and 2,
  fine-tuning from that half-trained checkpoint (as from a MARS model, nonlocal_i3d section
  4.4.2): split 0 starts from it, split 2 resumes from its own checkpoint instead."""
  config = cfg.build_config(EXPERIMENT, overrides=TINY + ["trainer.epochs=1", "data.split=2"],
                            data_dir=env["ilids"])
  trainer_lib.Trainer(config, splits_driver.split_dir(env["model_dir"], 2)).train()
  init = os.path.join(splits_driver.split_dir(env["model_dir"], 2), "ckpt-1")
  reader = tf.train.load_checkpoint(init)
  init_weights = [reader.get_tensor(name) for name in reader.get_variable_to_shape_map()]
  SpyTrainer.made.clear()
  aggregate = splits_driver.run_splits(EXPERIMENT, env["model_dir"], env["ilids"], "0,2",
                                       overrides=TINY + [f"trainer.init_checkpoint={init}"])
  trainers = list(SpyTrainer.made)
  return {"aggregate": aggregate, "trainers": trainers, "init": init,
          "init_weights": init_weights}


def _split_record(model_dir, split):
  with open(splits_driver.metrics_path(model_dir, split)) as f:
    return json.load(f)


def test_each_split_is_trained_and_evaluated_on_its_own_persons(env, driven):
  model_dir = env["model_dir"]
  assert [t.config.data.split for t in driven["trainers"]] == [0, 2]
  for split in (0, 2):
    run_dir = splits_driver.split_dir(model_dir, split)
    assert cfg.load_config(os.path.join(run_dir, "config.yaml")).data.split == split
    record = _split_record(model_dir, split)
    assert record["split"] == split and record["checkpoint_step"] == 2
    assert record["tested_on"]["split"] == split and record["tested_on"]["dataset"] == "ilidsvid"
    # Closed set: 4 test persons, each with one cam1 query and one cam2 gallery tracklet.
    assert record["num_valid_queries"] == 4 and record["num_gallery"] == 4
    # ls_set row = split: first half test persons, second half train persons (1-based).
    test_persons = {int(p) for p in env["ls_set"][split, :4]}
    train_persons = {int(p) for p in env["ls_set"][split, 4:]}
    shown = {int(name.split("_pid_")[1][:-4])
             for name in os.listdir(os.path.join(run_dir, "eval", "rank_lists"))}
    assert len(shown) == 2 and shown <= test_persons
    assert record["trained_on"]["num_identities"] == len(train_persons) == 4
    for name in ("metrics.md", "cmc.png"):
      assert os.path.exists(os.path.join(run_dir, "eval", name))
  assert not os.path.exists(splits_driver.split_dir(model_dir, 1))


def test_overrides_reach_every_split_fine_tuning_from_a_checkpoint(env, driven):
  """--override=trainer.init_checkpoint=...: split 0 had no checkpoint of its own and
  started from the init checkpoint's weights."""
  first = driven["trainers"][0]
  assert first.resumed_from is None
  assert first.config.trainer.init_checkpoint == driven["init"]
  saved = cfg.load_config(os.path.join(splits_driver.split_dir(env["model_dir"], 0),
                                       "config.yaml"))
  assert saved.trainer.init_checkpoint == driven["init"] and saved.data.split == 0
  kernels = [v for k, v in first.initial_weights.items() if k.endswith("conv/kernel")]
  assert len(kernels) == 1
  assert any(np.shape(w) == kernels[0].shape and np.array_equal(w, kernels[0])
             for w in driven["init_weights"]), "split 0 did not start from the init checkpoint"


def test_a_half_trained_split_resumes_from_its_checkpoint(env, driven):
  second = driven["trainers"][1]
  assert second.resumed_from == os.path.join(splits_driver.split_dir(env["model_dir"], 2),
                                             "ckpt-1")
  assert int(second.global_step.numpy()) == 2 == second.total_steps


def test_mean_and_sample_std_over_the_splits(env, driven):
  aggregate = driven["aggregate"]
  with open(os.path.join(env["model_dir"], "splits.json")) as f:
    written = json.load(f)
  records = [_split_record(env["model_dir"], s) for s in (0, 2)]
  for key in KEYS:
    values = np.array([r[key] for r in records])
    assert written[key] == pytest.approx(values.mean(), abs=1e-12)
    assert written[f"{key}_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
  assert written["splits"] == [0, 2] and written["num_splits"] == 2
  assert written["dataset_num_splits"] == 3 and written["complete"] is False
  assert written["dataset"] == "ilidsvid" and written["protocol"] == "torchreid"
  assert "ddof=1" in written["std"]
  assert written["protocol_description"].startswith("ilidsvid closed-set 3-split protocol")
  assert [row["split"] for row in written["per_split"]] == [0, 2]
  np.testing.assert_allclose(written["cmc"], np.mean([r["cmc"] for r in records], axis=0))
  assert json.loads(json.dumps(aggregate)) == written
  with open(os.path.join(env["model_dir"], "splits.md"), encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert lines[0] == f"# {EXPERIMENT} on ilidsvid: splits 0, 2 of 3"
  assert lines[2].startswith("Protocol: ilidsvid closed-set 3-split protocol")
  assert "sample standard deviation" in lines[2] and "all 3" in lines[2]
  assert lines[4] == "| split | rank-1 | rank-5 | rank-10 | rank-20 | mAP | step |"
  for line, record in zip(lines[6:8], records):
    assert line == (f"| {record['split']} | " + " | ".join(f"{100 * record[k]:.1f}" for k in KEYS)
                    + " | 2 |")
  assert lines[8] == "| mean ± std (2 splits) | " + " | ".join(
      f"{100 * written[k]:.1f} ± {100 * written[k + '_std']:.1f}" for k in KEYS) + " |  |"
  assert os.path.exists(os.path.join(env["model_dir"], "splits_cmc.png"))


def test_a_second_invocation_does_not_retrain(env, driven):
  with open(os.path.join(env["model_dir"], "splits.json")) as f:
    before = json.load(f)
  mtimes = {s: os.path.getmtime(splits_driver.metrics_path(env["model_dir"], s)) for s in (0, 2)}
  SpyTrainer.made.clear()
  again = splits_driver.run_splits(EXPERIMENT, env["model_dir"], env["ilids"], "0,2",
                                   overrides=TINY)
  assert SpyTrainer.made == []
  assert {s: os.path.getmtime(splits_driver.metrics_path(env["model_dir"], s))
          for s in (0, 2)} == mtimes
  assert json.loads(json.dumps(again)) == before
  # One split: its mean is its value and the spread is undefined (null), not 0.
  single = splits_driver.run_splits(EXPERIMENT, env["model_dir"], env["ilids"], "2",
                                    overrides=TINY)
  assert SpyTrainer.made == []
  record = _split_record(env["model_dir"], 2)
  assert [single[k] for k in KEYS] == [record[k] for k in KEYS]
  assert all(single[f"{k}_std"] is None for k in KEYS)
  with open(os.path.join(env["model_dir"], "splits.md"), encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert lines[0] == f"# {EXPERIMENT} on ilidsvid: split 2 of 3"
  assert "the last row repeats the single split" in lines[2]
  assert lines[-1] == "| mean (1 split) | " + " | ".join(
      f"{100 * record[k]:.1f}" for k in KEYS) + " |  |"


def test_cross_dataset_on_every_split_of_another_dataset(env, driven):
  """The iLIDS-VID split-0 run (4 training identities) tested on both PRID-2011 splits
  (3 training identities each), as a3d and stal report it."""
  run_dir = splits_driver.split_dir(env["model_dir"], 0)
  with open(os.path.join(run_dir, "eval", "metrics.json")) as f:
    in_domain = f.read()
  aggregate = evaluate.evaluate_run(run_dir, data_dir=env["prid"], split="all")
  out_dir = os.path.join(run_dir, "eval_prid2011")
  records = []
  for split in (0, 1):
    with open(os.path.join(out_dir, f"split_{split}", "metrics.json")) as f:
      records.append(json.load(f))
    assert records[-1]["split"] == split and records[-1]["num_gallery"] == 3
    assert records[-1]["tested_on"]["dataset"] == "prid2011"
    assert records[-1]["trained_on"]["num_identities"] == 4
    assert os.path.exists(os.path.join(out_dir, f"split_{split}", "cmc.png"))
  with open(os.path.join(out_dir, "metrics.json")) as f:
    written = json.load(f)
  assert json.loads(json.dumps(aggregate)) == written
  for key in KEYS:
    values = np.array([r[key] for r in records])
    assert written[key] == pytest.approx(values.mean(), abs=1e-12)
    assert written[f"{key}_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
  assert written["split"] == "all" and written["cross_dataset"] is True
  assert written["trained_on"]["dataset"] == "ilidsvid" and written["trained_on"]["split"] == 0
  assert written["tested_on"]["dataset"] == "prid2011" and written["tested_on"]["num_splits"] == 2
  with open(os.path.join(out_dir, "metrics.md"), encoding="utf-8") as f:
    text = f.read()
  assert text.startswith(f"# {EXPERIMENT} at step 2, tested on every split of prid2011 "
                         "(trained on ilidsvid split 0)")
  with open(os.path.join(run_dir, "eval", "metrics.json")) as f:
    assert f.read() == in_domain
  # One split by default: the run's own split number, under eval_prid2011/split_0.
  single = evaluate.evaluate_run(run_dir, data_dir=env["prid"])
  assert single["split"] == 0 and single["tested_on"]["split"] == 0
  for key in KEYS:
    assert single[key] == pytest.approx(records[0][key], abs=1e-9)


def test_evaluating_a_split_the_run_trained_on_is_refused(env, driven):
  run_dir = splits_driver.split_dir(env["model_dir"], 0)
  for split in (1, "all"):
    with pytest.raises(ValueError, match="that this run trained on"):
      evaluate.evaluate_run(run_dir, split=split)
  with pytest.raises(ValueError, match=r"has 2 split\(s\) \(0..1\) and split 5"):
    evaluate.evaluate_run(run_dir, data_dir=env["prid"], split=5)


def test_split_selection_and_bad_flags(env):
  assert splits_driver.parse_splits("all", 10) == list(range(10))
  assert splits_driver.parse_splits(None, 3) == [0, 1, 2]
  assert splits_driver.parse_splits("2, 0", 10) == [0, 2]
  assert splits_driver.parse_splits("0-2,7", 10) == [0, 1, 2, 7]
  assert splits_driver.parse_splits([3, 1, 3], 10) == [1, 3]
  with pytest.raises(ValueError, match=r"numbered 0..9; got \[10\]"):
    splits_driver.parse_splits("9,10", 10)
  with pytest.raises(ValueError, match="expected 'all' or split numbers"):
    splits_driver.parse_splits("first", 10)
  with pytest.raises(ValueError, match="goes downwards"):
    splits_driver.parse_splits("4-2", 10)
  with pytest.raises(cfg.ConfigError, match="choose splits with --splits"):
    splits_driver.run_splits(EXPERIMENT, str(env["root"] / "x"), env["ilids"], "0",
                             overrides=TINY + ["data.split=1"])


def test_aggregate_splits_rejects_percentages_and_bad_ddof():
  good = {k: 0.5 for k in KEYS}
  with pytest.raises(ValueError, match=r"Split 1 has rank1 = 81.3; expected a finite fraction"):
    aggregate_splits([good, dict(good, rank1=81.3)])
  with pytest.raises(ValueError, match="ddof must be 0"):
    aggregate_splits([good, good], ddof=-1)
  with pytest.raises(ValueError, match="sample standard deviation of one split is undefined"):
    aggregate_splits([good], ddof=1)
  aggregated = aggregate_splits(iter([good, dict(good, mAP=0.7)]), ddof=1)
  assert aggregated["mAP_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
  assert aggregated["std_ddof"] == 1


def test_default_split_on_another_dataset(env, driven):
  """The split-2 run: PRID-2011 has no split 2 (say so); a single-split dataset is tested on
  its split 0, reports in eval_<name> directly."""
  run_dir = splits_driver.split_dir(env["model_dir"], 2)
  with pytest.raises(ValueError, match=r"split 2 was asked for \(the run's data.split, the "
                     r"default\): pass --split=N"):
    evaluate.evaluate_run(run_dir, data_dir=env["prid"])
  single = str(env["root"] / "single")
  data_fixtures.write_tiny_dataset(single, num_ids=3, tracklets_per_id=2, num_frames=3,
                                   height=32, width=16, seed=3, num_test_ids=3,
                                   dataset="folder")
  record = evaluate.evaluate_run(run_dir, data_dir=single)
  assert record["split"] == 0 and record["tested_on"]["dataset"] == "folder"
  assert record["trained_on"]["split"] == 2 and record["cross_dataset"] is True
  with open(os.path.join(run_dir, "eval_folder", "metrics.json")) as f:
    assert json.load(f) == record

