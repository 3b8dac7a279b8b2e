"""Faults and bad input: every error path ends promptly with one message and a non-zero
code, no second writer on a run directory, no path outside the run or dataset folders from
names in data files, numbers in any notation, non-finite numbers refused, debris of an
interrupted save removed, corrupt test records skipped and counted, damaged frames inside
valid records named, a full disk ends a run with code 4 and loses no checkpoint or report."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tfreid import config as cfg
from tfreid import evaluate
from tfreid.data import reader
from tfreid.data import schema
from tfreid.training import checkpoints
from tfreid.training import run_lock
from tfreid.training import trainer as trainer_lib

from test_data_reader import damage_frame
from trainer_fixtures import (REPO, cli, first_cpu_strategy,  # pylint: disable=unused-import
                              fixture_tiny_data, tiny_config)


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _flip_byte(path, where=0.5):
  data = bytearray(open(path, "rb").read())
  data[int(len(data) * where)] ^= 0xFF
  with open(path, "wb") as f:
    f.write(data)


def _shard(data_dir, group):
  manifest = schema.read_manifest(str(data_dir))
  return os.path.join(str(data_dir), next(s["file"] for s in manifest["shards"]
                                          if s["group"] == group))


# ------------------------------------------------------------------------------ config


def test_numbers_in_any_notation_and_non_finite_numbers_refused():
  config = cfg.build_config("nonlocal_i3d", overrides=[
      "optimizer.learning_rate=1e-4", "losses.triplet.margin=.5", "schedule.decay_rate=3E-2"])
  assert config.optimizer.learning_rate == 1e-4
  assert (config.losses.triplet.margin, config.schedule.decay_rate) == (0.5, 0.03)
  for override in ("losses.triplet.weight=.nan", "optimizer.learning_rate=.inf",
                   "losses.cross_entropy.weight=-.inf"):
    with pytest.raises(cfg.ConfigError, match="must be a finite number"):
      cfg.build_config("nonlocal_i3d", overrides=[override])


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
  bad = tmp_path / "bad.yaml"
  bad.write_text("trainer:\n  epochs: [1, 2\n")
  with pytest.raises(cfg.ConfigError, match=r"bad.yaml' is not valid YAML at line 3"):
    cfg.build_config("nonlocal_i3d", config_files=[str(bad)])
  with pytest.raises(cfg.ConfigError, match="is not valid YAML"):
    cfg.build_config("nonlocal_i3d", overrides=["trainer.epochs=[1,"])


# ---------------------------------------------------------------- names from data files


def test_names_in_a_manifest_never_lead_outside_their_folder(tiny_data, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(tiny_data, data)
  manifest = json.loads((data / "manifest.json").read_text())
  for bad in ("../outside.tfrecord", "/etc/passwd", "sub/dir.tfrecord"):
    manifest["shards"][0]["file"] = bad
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(schema.DatasetError, match="not a plain file name"):
      for partition in ("train", "query"):
        reader.load_partition(str(data), partition)
  assert schema.path_component("x/../../ESCAPED") == "x_.._.._ESCAPED"
  assert schema.path_component("..") == "dataset"
  assert schema.path_component("mars") == "mars"


# ------------------------------------------------------------------- one writer per run


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
  model_dir = str(tmp_path / "run")
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, run_lock.LOCK_NAME), "w") as f:
      json.dump({"pid": sleeper.pid, "host": os.uname().nodename, "time": time.time(),
                 "start": run_lock._start_time(sleeper.pid),  # pylint: disable=protected-access
                 "command": "python -m tfreid.train --model_dir=run"}, f)
    with pytest.raises(run_lock.RunDirectoryBusy,
                       match=rf"in use by another training run \(process {sleeper.pid} .*"
                             r"tfreid.train --model_dir=run"):
      run_lock.acquire(model_dir)
  finally:
    sleeper.kill()
    sleeper.wait()
  # Its process is gone (as after kill -9): the lock is taken over.
  path = run_lock.acquire(model_dir)
  assert json.load(open(path))["pid"] == os.getpid()
  run_lock.release(path)
  assert not os.path.exists(path)


# ------------------------------------------------------------- interrupted checkpoints


def test_debris_of_an_interrupted_save_is_removed(tmp_path):
  model_dir = str(tmp_path / "run")
  step = tf.Variable(0, dtype=tf.int64)
  ckpt = tf.train.Checkpoint(v=tf.Variable(1.0), step=step)
  keeper = checkpoints.CheckpointKeeper(ckpt, model_dir, 3, step)
  saved = keeper.save(1)
  # A save killed half-way: TensorFlow's temporary folder, and the files of a checkpoint
  # written but never recorded in the state file.
  os.makedirs(os.path.join(model_dir, "ckpt-2_temp"))
  open(os.path.join(model_dir, "ckpt-2_temp", "part-00000-of-00001.index"), "w").close()
  for name in ("ckpt-3.index", "ckpt-3.data-00000-of-00001", "notes.txt"):
    open(os.path.join(model_dir, name), "w").close()
  checkpoints.CheckpointKeeper(ckpt, model_dir, 3, step)
  left = sorted(os.listdir(model_dir))
  assert "ckpt-2_temp" not in left and "ckpt-3.index" not in left
  assert "notes.txt" in left and os.path.basename(saved) + ".index" in left
  assert tf.train.latest_checkpoint(model_dir) == saved


# -------------------------------------------------------------------- corrupt records


@pytest.fixture(scope="module", name="trained")
def fixture_trained(tiny_data, tmp_path_factory):
  root = tmp_path_factory.mktemp("faults")
  data = root / "data"
  shutil.copytree(tiny_data, data)
  model_dir = root / "run"
  config = tiny_config(data, "trainer.epochs=1", "runtime.jit_compile=false")
  trainer_lib.run_training(config, str(model_dir), strategy=first_cpu_strategy())
  _flip_byte(_shard(data, "test"))
  return {"data": data, "model_dir": model_dir}


def test_corrupt_test_record_ends_evaluate_with_one_message_every_time(trained):
  """Run in a loop: the process must end promptly, every time, with code 2 and one line
  naming the shard and tracklet (it used to hang in some runs after printing)."""
  args = [sys.executable, "-m", "tfreid.evaluate", f"--model_dir={trained['model_dir']}"]
  for _ in range(3):
    proc = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Corrupt or unreadable record in shard ") and \
        "tracklet id" in last, proc.stderr[-2000:]


def test_skipped_test_records_leave_the_evaluation_counted(trained, tmp_path):
  with pytest.raises(tf.errors.OpError, match="Corrupt or unreadable record"):
    evaluate.evaluate_run(str(trained["model_dir"]), output_dir=str(tmp_path / "strict"))
  record = evaluate.evaluate_run(str(trained["model_dir"]),
                                 overrides=["data.skip_corrupt=true"],
                                 output_dir=str(tmp_path / "skip"))
  skipped = record["skipped"]["query"] + record["skipped"]["gallery"]
  assert any("1 unreadable record(s) left out" in s for s in skipped), record["skipped"]
  with pytest.raises(ValueError, match="only data.\\*, eval.\\*"):
    evaluate.evaluate_run(str(trained["model_dir"]), overrides=["model.head.dropout=0.1"])


def test_corrupt_training_record_ends_train_with_one_message(trained, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(trained["data"], data)
  _flip_byte(_shard(data, "train"), 0.3)
  proc = subprocess.run(cli(tmp_path / "run", data, "runtime.jit_compile=false"), cwd=REPO,
                        env=_env(), capture_output=True, text=True, timeout=240)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: Corrupt or unreadable record in shard ")


def test_resuming_a_run_directory_with_another_architecture_says_what_to_do(trained,
                                                                            tmp_path):
  model_dir = tmp_path / "run"
  shutil.copytree(trained["model_dir"], model_dir)
  other = tiny_config(trained["data"], "trainer.epochs=2", "runtime.jit_compile=false",
                      "model.head.embedding_dim=12")
  with pytest.raises(checkpoints.ResumeError,
                     match=r"holds checkpoints of another model .* resume it with "
                           r"--config_file=.*config.yaml, or train this configuration into "
                           r"another --model_dir"):
    trainer_lib.Trainer(other, str(model_dir), strategy=first_cpu_strategy())


# ------------------------------------------------- damaged frames inside valid records


def _damage_tracklet(data_dir, partition, row=0):
  """Truncates every frame of the tracklet at `row` of `partition` (its record stays
  valid: a source damaged before conversion); returns its tracklet id."""
  index = reader.load_partition(str(data_dir), partition)
  tid = int(index.tracklet_ids[row])
  for frame in range(int(index.num_frames[row])):
    damage_frame(str(data_dir), tid, frame, lambda jpeg: jpeg[:len(jpeg) // 2])
  return tid


def test_a_damaged_frame_ends_train_with_one_message(tiny_data, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(tiny_data, data)
  tid = _damage_tracklet(data, "train")
  proc = subprocess.run(cli(tmp_path / "run", data, "runtime.jit_compile=false"), cwd=REPO,
                        env=_env(), capture_output=True, text=True, timeout=240)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Corrupt or unreadable record in shard "), last
  assert f"(tracklet id {tid}): frame " in last and "is a damaged JPEG image" in last, last


def test_damaged_frames_are_skipped_and_counted_with_skip_corrupt(trained, tiny_data,
                                                                  tmp_path):
  from tfreid.data import pipeline  # pylint: disable=import-outside-toplevel
  data = tmp_path / "data"
  shutil.copytree(tiny_data, data)
  train_tid = _damage_tracklet(data, "train")
  query_tid = _damage_tracklet(data, "query")
  # Training: the damaged tracklet's clips are dropped, logged and counted.
  before = len(pipeline.skipped_records())
  config = tiny_config(data, "data.skip_corrupt=true")
  for _ in pipeline.make_train_dataset(config).take(4):
    pass
  assert train_tid in {t for _, _, t in pipeline.skipped_records()[before:]}
  # Evaluation: strict, an error naming the frame; skipping, the tracklet left out and
  # counted in the report.
  data_dir = f"data.data_dir={data}"
  with pytest.raises(tf.errors.OpError, match=rf"tracklet id {query_tid}\): frame 0 .*"
                                              "is a damaged JPEG image"):
    evaluate.evaluate_run(str(trained["model_dir"]), overrides=[data_dir],
                          output_dir=str(tmp_path / "strict"))
  record = evaluate.evaluate_run(str(trained["model_dir"]),
                                 overrides=[data_dir, "data.skip_corrupt=true"],
                                 output_dir=str(tmp_path / "skip"))
  assert record["skipped"]["query"] == ["1 unreadable record(s) left out"], record["skipped"]
  with open(tmp_path / "skip" / "metrics.json") as f:
    assert json.load(f)["skipped"] == record["skipped"]


# ----------------------------------------------------------------------------- disk full

# Runs an entry point with the Nth checkpoint save (N = argv[1]) replaced by a write that
# the kernel refuses with ENOSPC: TensorFlow's file layer writing to /dev/full, the error a
# checkpoint save meets on a full disk.
_FULL_DISK_AT_SAVE = """
import runpy, sys
import tensorflow as tf
from tfreid.training import checkpoints
fail_at = int(sys.argv.pop(1))
real_save, calls = checkpoints.CheckpointKeeper.save, []
def save(self, step):
  calls.append(step)
  if len(calls) == fail_at:
    with tf.io.gfile.GFile("/dev/full", "wb") as f:
      f.write(b"\\0" * (1 << 20))
  return real_save(self, step)
checkpoints.CheckpointKeeper.save = save
sys.argv[0] = "tfreid.train"
runpy.run_module("tfreid.train", run_name="__main__")
"""


def test_disk_full_while_saving_a_checkpoint_ends_train_with_code_4(tiny_data, tmp_path):
  model_dir = tmp_path / "run"
  args = cli(model_dir, tiny_data, "runtime.jit_compile=false",
             "trainer.checkpoint_every_steps=2")[3:]
  proc = subprocess.run([sys.executable, "-c", _FULL_DISK_AT_SAVE, "2"] + args, cwd=REPO,
                        env=_env(), capture_output=True, text=True, timeout=240)
  assert proc.returncode == 4, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: no space left on the device while writing; free some space and run the same "
      "command to resume from the last checkpoint."), proc.stderr[-2000:]
  # The checkpoint saved before is the latest, whole: every variable reads back.
  latest = tf.train.latest_checkpoint(str(model_dir))
  assert latest is not None and latest.endswith("ckpt-2"), os.listdir(model_dir)
  saved = tf.train.load_checkpoint(latest)
  names = [n for n, _ in tf.train.list_variables(latest)]
  assert len(names) > 10 and all(saved.get_tensor(n) is not None for n in names)
  assert not [n for n in os.listdir(model_dir) if "_temp" in n or n.endswith(".tmp")]


def test_disk_full_while_writing_metrics_ends_evaluate_with_code_4(trained, tmp_path):
  """A real ENOSPC from the kernel: metrics.json's temporary file is /dev/full. The
  metrics.json of the evaluation before stays as it was."""
  out = tmp_path / "eval"
  args = [sys.executable, "-m", "tfreid.evaluate", f"--model_dir={trained['model_dir']}",
          f"--output_dir={out}", "--override=data.skip_corrupt=true"]
  proc = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=240)
  assert proc.returncode == 0, proc.stderr[-2000:]
  before = (out / "metrics.json").read_bytes()
  os.symlink("/dev/full", out / "metrics.json.tmp")
  proc = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=240)
  assert proc.returncode == 4, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: no space left on the device ([Errno 28] No space left on "
                         "device") and last.endswith(
                             "free some space and run the same command to resume."), last
  assert (out / "metrics.json").read_bytes() == before
