"""tf.data pipelines (tfreid/data/pipeline.py): PK batches, replicas, test clips, bad input."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

import data_fixtures
from tfreid import config as cfg
from tfreid.data import augment
from tfreid.data import pipeline
from tfreid.data import reader
from tfreid.data import schema

H, W, T = 8, 4, 4


def data_config(data_dir, **kwargs):
  c = cfg.DataConfig(data_dir=data_dir, height=H, width=W, seq_len=T, num_identities=2,
                     num_instances=2, test_batch_size=5)
  c.augmentation = cfg.AugmentationConfig(crop_enlarge=0.0, flip=False)
  for key, value in kwargs.items():
    setattr(c, key, value)
  return c


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
  """Frames are flat colours naming themselves: R = frame number, G = tracklet id."""
  path = str(tmp_path_factory.mktemp("pipeline") / "codes")
  data_fixtures.write_tiny_dataset(path, num_ids=4, tracklets_per_id=3, num_frames=(2, 11),
                                   height=H, width=W, num_test_ids=2, frame_format="png",
                                   content="code", shards_per_group=2)
  return path


def frame_codes(clips):
  """(tracklet id, frame number) of every frame of uint8 clips [..., H, W, 3]."""
  pixel = clips[..., 0, 0, :].astype(int)
  return pixel[..., 1], pixel[..., 0] + 256 * pixel[..., 2]


def take(dataset, n):
  return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(n)]


def test_pk_batches_cover_every_identity_once_per_epoch(codes):
  config = data_config(codes, sample_stride=1)
  index = reader.load_partition(codes, "train")
  assert pipeline.steps_per_epoch(config) == 2
  pid_of = dict(zip(index.tracklet_ids.tolist(), index.pids.tolist()))
  length_of = dict(zip(index.tracklet_ids.tolist(), index.num_frames.tolist()))
  batches = take(pipeline.make_train_dataset(config, seed=3), 6)
  for epoch in range(3):
    seen = []
    for batch in batches[2 * epoch: 2 * epoch + 2]:
      assert batch["clips"].shape == (4, T, H, W, 3) and batch["clips"].dtype == np.uint8
      counts = collections.Counter(batch["pids"].tolist())
      assert len(counts) == 2 and set(counts.values()) == {2}  # P identities x K
      seen += list(counts)
      tids, frames = frame_codes(batch["clips"])
      for b in range(4):
        tid = int(tids[b, 0])
        assert (tids[b] == tid).all() and pid_of[tid] == batch["pids"][b]
        start, n = int(frames[b, 0]), length_of[tid]
        expected = start + np.arange(T) % min(T, n - start)  # consecutive, padded cyclically
        np.testing.assert_array_equal(frames[b], expected)
      for pid in counts:  # K distinct tracklets (each identity has 3 >= K)
        assert len({int(tids[b, 0]) for b in range(4) if batch["pids"][b] == pid}) == 2
      train_pids = index.manifest["splits"][0]["train_pids"]
      assert [train_pids[label] for label in batch["labels"]] == batch["pids"].tolist()
    assert sorted(seen) == sorted(set(index.pids.tolist()))  # every identity once


def test_same_seed_same_batches(codes):
  config = data_config(codes, train_sampler="restricted_random", num_instances=4)
  config.augmentation = cfg.AugmentationConfig(crop_enlarge=0.0, flip=True, random_erasing=0.5)
  a = take(pipeline.make_train_dataset(config, seed=11), 3)
  b = take(pipeline.make_train_dataset(config, seed=11), 3)
  c = take(pipeline.make_train_dataset(config, seed=12), 3)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any(not np.array_equal(x["clips"], z["clips"]) for x, z in zip(a, c))
  # K = 4 > 3 tracklets per identity: drawn with replacement, still K clips per identity.
  for batch in a:
    assert sorted(collections.Counter(batch["pids"].tolist()).values()) == [4, 4]


def test_training_augmentation_is_one_draw_per_clip(codes):
  # Frames are flat colours, so the crop and flip keep each frame's colour; the erased
  # rectangle (always on here) shows which draw a clip got: the same on all its frames,
  # and different between clips.
  config = data_config(codes, num_instances=3, sample_stride=1)
  config.augmentation = cfg.AugmentationConfig(crop_enlarge=0.125, flip=True,
                                               random_erasing=1.0)
  config.height, config.width = 32, 16
  fill = np.array(augment.ERASE_FILL)
  boxes = []
  for batch in take(pipeline.make_train_dataset(config, seed=4), 2):
    for clip in batch["clips"]:
      erased = (clip == fill).all(-1)  # [T, 32, 16]
      assert erased.any()
      for t in range(T):
        np.testing.assert_array_equal(erased[t], erased[0])
        colours = clip[t][~erased[t]]
        assert (colours == colours[0]).all()  # the frame's own flat colour elsewhere
      rows, cols = np.nonzero(erased[0])
      box = (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)
      assert erased[0].sum() == (box[1] - box[0]) * (box[3] - box[2])  # a rectangle
      boxes.append(box)
  assert len(set(boxes)) > len(boxes) // 2


def test_two_replicas_get_whole_identities(codes):
  devices = tf.config.list_logical_devices("CPU")
  assert len(devices) >= 2
  strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
  config = data_config(codes)
  config.augmentation.flip = True
  distributed = iter(pipeline.make_train_dataset(config, strategy=strategy, seed=5))
  plain = take(pipeline.make_train_dataset(config, seed=5), 3)
  for step in range(3):
    batch = next(distributed)
    replicas = [{k: strategy.experimental_local_results(v)[r].numpy() for k, v in batch.items()}
                for r in range(2)]
    pid_sets = []
    for part in replicas:
      counts = collections.Counter(part["pids"].tolist())
      assert len(counts) == 1 and list(counts.values()) == [2]  # P / 2 whole identities x K
      pid_sets.append(set(counts))
    assert not pid_sets[0] & pid_sets[1]
    for key in plain[step]:  # the union is the global batch
      np.testing.assert_array_equal(
          np.concatenate([replicas[0][key], replicas[1][key]]), plain[step][key])
  with pytest.raises(pipeline.DatasetError, match="divisible by the number of replicas"):
    pipeline.make_train_dataset(data_config(codes, num_identities=3), strategy=strategy)


def test_input_pipelines_shard_by_file_then_by_identity(codes):
  index = reader.load_partition(codes, "train")
  assert len(index.shard_files) == 2
  by_file = [pipeline._pipeline_rows(index, p, 2) for p in range(2)]
  for p, rows in enumerate(by_file):
    assert (index.shard_index[rows] == p).all()
  assert sorted(np.concatenate(by_file).tolist()) == list(range(len(index)))
  by_identity = [pipeline._pipeline_rows(index, p, 3) for p in range(3)]  # 3 > 2 files
  assert sorted(np.concatenate(by_identity).tolist()) == list(range(len(index)))
  ids = [set(index.labels[rows].tolist()) for rows in by_identity]
  assert all(ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
  # A pipeline samples only from its shard's tracklets.
  context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                       num_replicas_in_sync=2)
  batch = take(pipeline.train_dataset_fn(data_config(codes), seed=0)(context), 1)[0]
  tids, _ = frame_codes(batch["clips"])
  shard_of = dict(zip(index.tracklet_ids.tolist(), index.shard_index.tolist()))
  assert {shard_of[int(t)] for t in tids[:, 0]} == {1}


def test_steps_per_epoch_needs_p_identities(codes):
  with pytest.raises(pipeline.DatasetError, match="fewer than P"):
    pipeline.steps_per_epoch(data_config(codes, num_identities=5))


def test_dense_test_clips_cover_every_frame(codes):
  config = data_config(codes)
  index = reader.load_partition(codes, "gallery", protocol="mars_matlab")
  assert index.partition == "gallery_all"
  counts = pipeline.test_clips_per_tracklet(config, index)
  np.testing.assert_array_equal(counts, (index.num_frames + T - 1) // T)
  dataset = pipeline.make_test_dataset(config, "gallery", protocol="mars_matlab")
  batches = take(dataset, 100)
  assert all(len(b["index"]) <= 5 for b in batches)
  clips = collections.defaultdict(list)
  for batch in batches:
    tids, frames = frame_codes(batch["clips"])
    for b, position in enumerate(batch["index"]):
      assert tids[b, 0] == index.tracklet_ids[position]
      assert batch["pids"][b] == index.pids[position] and batch["labels"][b] == -1
      assert batch["camids"][b] == index.camids[position]
      clips[int(position)].append(frames[b])
  assert sorted(clips) == list(range(len(index)))
  for position, got in clips.items():
    n = int(index.num_frames[position])
    assert len(got) == counts[position]
    got = sorted(got, key=lambda c: c[0])
    body = np.concatenate([c for c in got[:-1]] + [got[-1][:n - (len(got) - 1) * T]])
    np.testing.assert_array_equal(body, np.arange(n))  # every frame once
    assert set(got[-1]) <= set(range((len(got) - 1) * T, n))  # padding: its own frames
  again = take(dataset, 100)
  for x, y in zip(batches, again):
    np.testing.assert_array_equal(x["index"], y["index"])


def test_chunk_first_test_clips(codes):
  config = data_config(codes, test_sampler="chunk_first")
  index = reader.load_partition(codes, "query")
  batches = take(pipeline.make_test_dataset(config, "query"), 100)
  positions = np.concatenate([b["index"] for b in batches])
  assert sorted(positions.tolist()) == list(range(len(index)))
  for batch in batches:
    _, frames = frame_codes(batch["clips"])
    for b, position in enumerate(batch["index"]):
      n = int(index.num_frames[position])
      np.testing.assert_array_equal(frames[b], [k * n // T for k in range(T)])


@pytest.mark.parametrize("length", [1, 3, 8])
def test_fixed_length_test_sequences(codes, length):
  """eval.query_seq_len / gallery_seq_len (stal fig. 11): L frames per tracklet, distinct
  when it has L or more, else every frame plus repeats; in time order, tiled cyclically into
  T-frame clips; the same draw for the same seed, another for another seed."""
  config = data_config(codes)
  index = reader.load_partition(codes, "query")

  def frames_by_tracklet(seed):
    batches = take(pipeline.make_test_dataset(config, "query", num_frames=length,
                                              length_seed=seed), 100)
    found = {}
    for batch in batches:
      ids, frames = frame_codes(batch["clips"])
      for b, position in enumerate(batch["index"]):
        assert (ids[b] == index.tracklet_ids[position] % 256).all()
        found.setdefault(int(position), []).append(frames[b])
    return {p: np.concatenate(v) for p, v in found.items()}

  drawn = frames_by_tracklet(seed=0)
  assert sorted(drawn) == list(range(len(index)))
  clips = -(-length // T)
  differs = False
  other = frames_by_tracklet(seed=1)
  for position, frames in drawn.items():
    n = int(index.num_frames[position])
    assert frames.shape == (clips * T,)
    chosen = frames[:length]
    np.testing.assert_array_equal(frames, chosen[np.arange(clips * T) % length])
    assert (np.diff(chosen) >= 0).all() and chosen.min() >= 0 and chosen.max() < n
    if n >= length:
      assert len(set(chosen.tolist())) == length
    else:
      assert set(chosen.tolist()) == set(range(n))
    differs |= not np.array_equal(frames, other[position])
  assert differs or length == 1 and all(index.num_frames[p] <= 1 for p in drawn)
  again = frames_by_tracklet(seed=0)
  for position, frames in drawn.items():
    np.testing.assert_array_equal(frames, again[position])


def corrupt_record(data_dir, partition, position):
  """Flips a byte inside the frames of a record (its data CRC no longer matches)."""
  index = reader.load_partition(data_dir, partition)
  path = index.shard_files[index.shard_index[position]]
  offset = int(index.offsets[position]) + 12 + int(index.lengths[position]) // 2
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0xFF]))
  return path, int(index.tracklet_ids[position])


def test_corrupt_record_names_the_shard_or_is_skipped(tmp_path):
  path = str(tmp_path / "bad")
  data_fixtures.write_tiny_dataset(path, num_ids=2, tracklets_per_id=2, num_frames=6,
                                   height=H, width=W, frame_format="png", content="code")
  shard, bad_query = corrupt_record(path, "query", 1)
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    take(pipeline.make_test_dataset(data_config(path), "query"), 10)
  assert os.path.basename(shard) in str(error.value) and "skip_corrupt" in str(error.value)
  skip = data_config(path, skip_corrupt=True)
  before = len(pipeline.skipped_records())
  batches = take(pipeline.make_test_dataset(skip, "query"), 10)
  assert sorted(np.concatenate([b["index"] for b in batches]).tolist()) == [0, 0]  # 2 clips
  assert pipeline.skipped_records()[before:] == [(shard, pipeline.skipped_records()[-1][1],
                                                  bad_query)]
  # Training: K = every tracklet of an identity, so the bad one is drawn each epoch; its
  # identity is left out of that epoch, the batches stay whole identities.
  train_shard, bad_train = corrupt_record(path, "train", 0)
  strict = data_config(path, num_identities=1)
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    take(pipeline.make_train_dataset(strict, seed=0), 3)
  assert all(part in str(error.value) for part in (
      f"shard {train_shard}", f"tracklet id {bad_train}", "fails its checksum",
      "skip_corrupt"))
  skip.num_identities = 1
  before = len(pipeline.skipped_records())
  batches = take(pipeline.make_train_dataset(skip, seed=0), 3)
  index = reader.load_partition(path, "train")
  bad_pid = index.pids[index.tracklet_ids == bad_train][0]
  for batch in batches:
    assert batch["pids"].tolist() == [batch["pids"][0]] * 2 and batch["pids"][0] != bad_pid
  assert any(r[0] == train_shard and r[2] == bad_train
             for r in pipeline.skipped_records()[before:])


def test_missing_stream_is_an_error_naming_the_flag(codes):
  with pytest.raises(pipeline.DatasetError,
                     match=r"reads optical flow.*data_pipelines.convert --dataset=.* "
                           r"--optical_flow"):
    pipeline.make_train_dataset(data_config(codes), streams=("clips", "flow"))
  with pytest.raises(pipeline.DatasetError, match="--keypoints=FILE"):
    pipeline.make_test_dataset(data_config(codes), "query", streams=("clips", "keypoints"))
  with pytest.raises(ValueError, match="'clips' first"):
    pipeline.make_test_dataset(data_config(codes), "query", streams=("clips", "depth"))


def test_flow_and_keypoint_streams(tmp_path):
  path = str(tmp_path / "streams")
  data_fixtures.write_tiny_dataset(path, num_ids=2, tracklets_per_id=2, num_frames=5,
                                   height=H, width=W, with_flow=True, with_keypoints=True,
                                   frame_format="png", content="code")
  config = data_config(path)
  streams = ("clips", "flow", "keypoints")
  config.augmentation = cfg.AugmentationConfig(crop_enlarge=0.125, flip=True)
  batch = take(pipeline.make_train_dataset(config, seed=1, streams=streams), 1)[0]
  assert batch["flow"].shape == (4, T, H, W, 2) and batch["flow"].dtype == np.float32
  assert batch["keypoints"].shape == (4, T, 14, 3) and batch["keypoints"].dtype == np.float32
  # Test clips are not augmented: the stored streams come back, frame by frame.
  index = reader.load_partition(path, "query")
  records = {}
  for shard in index.shard_files:
    for record in tf.data.TFRecordDataset(shard):
      example = tf.train.Example.FromString(record.numpy())
      records[example.features.feature[schema.TRACKLET_ID].int64_list.value[0]] = example
  for batch in take(pipeline.make_test_dataset(config, "query", streams=streams), 10):
    _, frames = frame_codes(batch["clips"])
    for b, position in enumerate(batch["index"]):
      example = records[int(index.tracklet_ids[position])]
      kp = np.array(example.features.feature[schema.KEYPOINTS].float_list.value,
                    np.float32).reshape(-1, 14, 3)
      present = np.array(example.features.feature[schema.KEYPOINTS_PRESENT].int64_list.value)
      expected = kp[frames[b]] * present[frames[b], None, None]
      np.testing.assert_allclose(batch["keypoints"][b], expected, atol=1e-5)
      assert (batch["keypoints"][b][frames[b] == 1] == 0).all()  # frame 1 has none
      for t, f in enumerate(frames[b]):
        flow = data_fixtures.flow_field(int(f), H, W)
        np.testing.assert_allclose(batch["flow"][b, t], flow, atol=0.5 / data_fixtures.FLOW_SCALE)


def _plans(config, seed, steps, start_step=0):
  """(tracklet ids, frame numbers) of `steps` global batches from `start_step`."""
  ds = pipeline.make_train_dataset(config, seed=seed, start_step=start_step)
  out = []
  for batch in take(ds, steps):
    ids, frames = frame_codes(batch["clips"])
    out.append((ids.tolist(), frames.tolist()))
  return out


def test_seeds_share_no_epoch_and_a_stream_resumes_at_any_step(codes):
  """Epoch e of seed s is drawn from (s, e): seeds 0 and 1 share no epoch's batch plan (the
  trainer used to draw epoch e of seed s as epoch 0 of seed s + e), and a stream started at
  step n gives the batches a stream started at 0 gives from step n on."""
  config = data_config(codes, sample_stride=1, num_identities=1)
  per_epoch = pipeline.steps_per_epoch(config)
  epochs = 3
  seed0 = _plans(config, 0, per_epoch * epochs)
  seed1 = _plans(config, 1, per_epoch * epochs)
  for e0 in range(epochs):
    for e1 in range(epochs):
      assert (seed0[e0 * per_epoch:(e0 + 1) * per_epoch]
              != seed1[e1 * per_epoch:(e1 + 1) * per_epoch]), (e0, e1)
  for start in (1, per_epoch, per_epoch + 1):
    assert _plans(config, 0, 3, start_step=start) == seed0[start:start + 3]


def test_test_clips_take_data_test_seq_len(codes):
  """data.test_seq_len sets the test clip length (training keeps seq_len): dense clips of
  5 frames, ceil(n / 5) per tracklet, consecutive frames."""
  config = data_config(codes, test_seq_len=5)
  index = reader.load_partition(codes, "query")
  counts = {}
  for batch in take(pipeline.make_test_dataset(config, "query"), 100):
    assert batch["clips"].shape[1:] == (5, H, W, 3)
    _, frames = frame_codes(batch["clips"])
    for b, position in enumerate(batch["index"]):
      counts[int(position)] = counts.get(int(position), 0) + 1
      n = int(index.num_frames[position])
      if n >= 5:
        assert (np.diff(frames[b]) == 1).all() or frames[b][0] + 4 >= n
  expected = {p: -(-int(n) // 5) for p, n in enumerate(index.num_frames)}
  assert counts == expected
  assert take(pipeline.make_train_dataset(config), 1)[0]["clips"].shape[1] == T
  assert list(pipeline.test_clips_per_tracklet(config, index)) == list(expected.values())


@pytest.mark.parametrize("condition", [(True, 0.0), (False, 0.25), (True, -0.25)])
def test_test_time_augmentation_condition_translates_then_mirrors(tmp_path, condition):
  """make_test_dataset(condition=(flip, shift)): every test clip is the plain one moved by
  round(shift * (H, W)) pixels with zeros filled in, then mirrored when flip; the flow's
  dx changes sign under the mirror; the same clips, in the same order, otherwise."""
  path = str(tmp_path / "tta")
  data_fixtures.write_tiny_dataset(path, num_ids=2, tracklets_per_id=2, num_frames=(3, 6),
                                   height=H, width=W, with_flow=True, frame_format="png")
  config = data_config(path)
  streams = ("clips", "flow")
  plain = take(pipeline.make_test_dataset(config, "query", streams=streams), 10)
  moved = take(pipeline.make_test_dataset(config, "query", streams=streams,
                                          condition=condition), 10)
  flip, shift = condition
  sy, sx = round(shift * H), round(shift * W)
  assert (sy, sx) == ((2, 1) if shift > 0 else (-2, -1) if shift < 0 else (0, 0))

  def expected(a):
    out = np.zeros_like(a)
    ys, yd = (slice(0, H - sy), slice(sy, H)) if sy >= 0 else (slice(-sy, H), slice(0, H + sy))
    xs, xd = (slice(0, W - sx), slice(sx, W)) if sx >= 0 else (slice(-sx, W), slice(0, W + sx))
    out[..., yd, xd, :] = a[..., ys, xs, :]
    return out[..., ::-1, :] if flip else out

  assert len(plain) == len(moved)
  changed = False
  for a, b in zip(plain, moved):
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(b["clips"], expected(a["clips"]))
    flow = expected(a["flow"])
    if flip:
      flow[..., 0] *= -1.0
    np.testing.assert_allclose(b["flow"], flow, atol=1e-6)
    changed |= bool(np.any(b["clips"] != a["clips"]))
  assert changed
