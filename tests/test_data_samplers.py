"""Clip samplers (tfreid/data/samplers.py) against plain numpy versions of their formulas."""

import numpy as np
import pytest
import tensorflow as tf

from tfreid.data import samplers

LENGTHS = (1, 2, 3, 5, 7, 8, 9, 16, 17, 23, 40)


def np_consecutive(n, t, stride, u):
  span = (t - 1) * stride + 1
  start = min(int(np.floor(u * (max(n - span, 0) + 1))), max(n - span, 0))
  frames = list(range(start, n, stride))[:t]  # the frames that exist
  return np.array([frames[i % len(frames)] for i in range(t)])


def np_chunks(n, t):
  edges = [k * n // t for k in range(t + 1)]
  return [(edges[k], max(edges[k + 1] - edges[k], 1)) for k in range(t)]


def np_restricted(n, t, u):
  return np.array([b + min(int(np.floor(uk * l)), l - 1)
                   for (b, l), uk in zip(np_chunks(n, t), u)])


def np_random(n, t, u):
  if n >= t:
    return np.sort(np.argsort(u[:n], kind="stable")[:t])
  return np.sort(np.minimum(np.floor(u[:t] * n).astype(int), n - 1))


def np_evenly(n, t):
  # torchreid's video `evenly`: arange(0, n - n % t, (n - n % t) / t), or pad with the last.
  if n >= t:
    m = n - n % t
    return np.arange(0, m, m / t).astype(int)
  return np.concatenate([np.arange(n), np.full(t - n, n - 1)])


def np_dense(n, t):
  clips, start = [], 0
  while start < n:
    own = list(range(start, min(start + t, n)))
    clips.append([own[i % len(own)] for i in range(t)])
    start += t
  return np.array(clips)


@pytest.mark.parametrize("t,stride", [(4, 1), (8, 1), (4, 3), (1, 1)])
def test_consecutive_matches_formula_and_draw(t, stride):
  for n in LENGTHS:
    for s in range(4):
      seed = tf.constant([s, n], tf.int64)
      got = samplers.sample_train_clip("consecutive", n, t, stride, seed).numpy()
      u = tf.random.stateless_uniform([], seed).numpy()
      np.testing.assert_array_equal(got, np_consecutive(n, t, stride, u), err_msg=f"n={n}")
      assert got.min() >= 0 and got.max() < n
  # Long tracklets: a clip is T frames `stride` apart.
  got = samplers.consecutive_indices(100, t, stride, 0.999).numpy()
  np.testing.assert_array_equal(np.diff(got), np.full(t - 1, stride))
  assert got[-1] == 99


def test_consecutive_pads_short_tracklets_cyclically():
  np.testing.assert_array_equal(samplers.consecutive_indices(3, 8, 1, 0.5).numpy(),
                                [0, 1, 2, 0, 1, 2, 0, 1])


@pytest.mark.parametrize("t", [1, 4, 6, 8])
def test_restricted_random_one_frame_per_chunk(t):
  for n in LENGTHS:
    for s in range(4):
      seed = tf.constant([s, 7], tf.int64)
      got = samplers.sample_train_clip("restricted_random", n, t, 1, seed).numpy()
      u = tf.random.stateless_uniform([t], seed).numpy()
      np.testing.assert_array_equal(got, np_restricted(n, t, u), err_msg=f"n={n}")
      for k, (b, l) in enumerate(np_chunks(n, t)):
        assert b <= got[k] < b + l
      assert np.all(np.diff(got) >= 0)


def test_restricted_random_covers_whole_chunks():
  # u at the ends of [0, 1): the first and the last frame of each chunk.
  n, t = 20, 6
  lo = samplers.restricted_random_indices(n, t, np.zeros(t, np.float32)).numpy()
  hi = samplers.restricted_random_indices(n, t, np.full(t, 0.9999, np.float32)).numpy()
  np.testing.assert_array_equal(lo, [0, 3, 6, 10, 13, 16])
  np.testing.assert_array_equal(hi, [2, 5, 9, 12, 15, 19])


@pytest.mark.parametrize("t", [4, 8])
def test_random_sorted(t):
  for n in LENGTHS:
    seed = tf.constant([3, n], tf.int64)
    got = samplers.sample_train_clip("random", n, t, 1, seed).numpy()
    u = tf.random.stateless_uniform([max(n, t)], seed).numpy()
    np.testing.assert_array_equal(got, np_random(n, t, u), err_msg=f"n={n}")
    assert np.all(np.diff(got) >= 0)
    if n >= t:
      assert len(set(got)) == t


@pytest.mark.parametrize("t", [1, 4, 8])
def test_evenly_is_torchreid(t):
  for n in LENGTHS:
    got = samplers.sample_train_clip("evenly", n, t, 1, tf.constant([0, 0], tf.int64))
    np.testing.assert_array_equal(got.numpy(), np_evenly(n, t), err_msg=f"n={n}")


@pytest.mark.parametrize("t", [1, 4, 8])
def test_dense_covers_every_frame_once(t):
  for n in LENGTHS:
    got = samplers.test_clips("dense", n, t).numpy()
    np.testing.assert_array_equal(got, np_dense(n, t), err_msg=f"n={n}")
    assert got.shape == (samplers.num_test_clips("dense", n, t), t)
    # Every frame exactly once, apart from the padding of the last clip (its own frames).
    m = n - (len(got) - 1) * t
    body = np.concatenate([got[:-1].ravel(), got[-1, :m]])
    np.testing.assert_array_equal(body, np.arange(n))
    assert set(got[-1, m:]) <= set(got[-1, :m])


def np_dense_strided(n, t, stride):
  """Each residue class mod `stride`, in order, cut into clips of t (last padded
  cyclically); clips sorted by their first frame."""
  clips = []
  for r in range(stride):
    frames = list(range(r, n, stride))
    for k in range(0, len(frames), t):
      own = frames[k:k + t]
      clips.append([own[i % len(own)] for i in range(t)])
  return np.array(sorted(clips, key=lambda c: c[0]))


@pytest.mark.parametrize("t,stride", [(4, 2), (8, 8), (3, 5), (1, 3)])
def test_strided_dense_covers_every_frame_once_at_the_stride(t, stride):
  for n in LENGTHS + (57, 64, 130):
    got = samplers.test_clips("dense", n, t, stride).numpy()
    np.testing.assert_array_equal(got, np_dense_strided(n, t, stride), err_msg=f"n={n}")
    assert got.shape == (samplers.num_test_clips("dense", n, t, stride), t)
    # Every frame in exactly one clip (padding repeats a clip's own frames).
    assert sorted({int(f) for clip in got for f in set(clip)}) == list(range(n))
    assert sum(len(set(clip)) for clip in got) == n
    for clip in got:
      own = len(set(clip))
      assert (np.diff(clip[:own]) == stride).all()  # frames `stride` apart
  lengths = np.array(LENGTHS)
  np.testing.assert_array_equal(samplers.num_test_clips("dense", lengths, t, stride),
                                [len(np_dense_strided(n, t, stride)) for n in LENGTHS])
  # Hand-computed: 20 frames, T=4, stride 3 -> residues of 7, 7, 6 frames -> 2 + 2 + 2 clips.
  assert samplers.num_test_clips("dense", 20, 4, 3) == 6


def test_stride_one_is_the_plain_dense_sampler():
  for n in LENGTHS:
    np.testing.assert_array_equal(samplers.test_clips("dense", n, 4, 1).numpy(),
                                  np_dense(n, 4))
  with pytest.raises(ValueError, match="dense test sampler takes a stride"):
    samplers.test_clips("chunk_first", 20, 4, 2)


@pytest.mark.parametrize("stride", [1, 8])
def test_training_and_test_clips_agree_in_spacing(stride):
  """A consecutive training clip and every full dense test clip at the same stride have
  frames `stride` apart (nonlocal_i3d trains and tests on one time scale)."""
  n, t = 200, 8
  for s in range(5):
    train = samplers.sample_train_clip("consecutive", n, t, stride,
                                       tf.constant([s, 1], tf.int64)).numpy()
    assert (np.diff(train) == stride).all()
  test = samplers.test_clips("dense", n, t, stride).numpy()
  full = [clip for clip in test if len(set(clip)) == t]
  assert len(full) >= len(test) - stride
  for clip in full:
    assert (np.diff(clip) == stride).all()


def test_chunk_first_is_first_frame_of_each_chunk():
  for n in LENGTHS:
    got = samplers.test_clips("chunk_first", n, 6).numpy()
    assert got.shape == (1, 6)
    np.testing.assert_array_equal(got[0], [b for b, _ in np_chunks(n, 6)])
  assert samplers.num_test_clips("chunk_first", np.array([3, 50]), 6).tolist() == [1, 1]


@pytest.mark.parametrize("sampler", ["consecutive", "restricted_random", "random", "evenly"])
def test_clips_sampled_together_follow_the_formula_row_by_row(sampler):
  # The training pipeline samples the clips of a whole epoch at once from one seed.
  n = np.array(LENGTHS)
  seed = tf.constant([4, 2], tf.int64)
  got = samplers.sample_train_clips(sampler, n, 6, 2, seed).numpy()
  u = samplers.train_draws(sampler, n, 6, seed).numpy()
  assert got.shape == (len(n), 6) and u.shape[0] == len(n)
  for r, length in enumerate(n):
    if sampler == "consecutive":
      expected = np_consecutive(length, 6, 2, u[r])
    elif sampler == "restricted_random":
      expected = np_restricted(length, 6, u[r])
    elif sampler == "random":
      expected = np_random(length, 6, u[r])
    else:
      expected = np_evenly(length, 6)
    np.testing.assert_array_equal(got[r], expected, err_msg=f"n={length}")
  if sampler == "random":
    assert u.shape[1] == max(n.max(), 6)


def test_samplers_trace_inside_tf_data():
  ds = tf.data.Dataset.from_tensor_slices(tf.constant([3, 30], tf.int64)).map(
      lambda n: samplers.sample_train_clip("restricted_random", n, 4, 1,
                                           tf.stack([n, n])))
  got = [x.numpy() for x in ds]
  assert [len(x) for x in got] == [4, 4]
  assert got[0].max() < 3 and got[1].max() < 30


def test_unknown_sampler_names_the_choices():
  with pytest.raises(ValueError, match="consecutive, restricted_random, random, evenly"):
    samplers.sample_train_clip("bogus", 5, 4, 1, tf.constant([0, 0], tf.int64))
  with pytest.raises(ValueError, match="dense, chunk_first"):
    samplers.test_clips("bogus", 5, 4)


def test_first_occurrences_mark_the_padding_repeats():
  # 10 frames in dense clips of 4: the last clip is 8, 9, 8, 9.
  clips = samplers.test_clips("dense", 10, 4)
  np.testing.assert_array_equal(samplers.first_occurrences(clips).numpy(),
                                [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
  # 2 frames in one clip of 4: 0, 1, 0, 1.
  np.testing.assert_array_equal(
      samplers.first_occurrences(samplers.test_clips("dense", 2, 4)).numpy(), [[1, 1, 0, 0]])
  # Stride 3 over 7 frames, clips of 2: every frame counted once in total.
  clips = samplers.test_clips("dense", 7, 2, 3)
  weights = samplers.first_occurrences(clips).numpy()
  assert weights.sum() == 7
  counted = clips.numpy()[weights == 1]
  assert sorted(counted.tolist()) == list(range(7))
  # random_length: L = 3 drawn frames tiled to 4: the fourth is fill.
  np.testing.assert_array_equal(samplers.random_length_weights(3, 4).numpy(), [[1, 1, 1, 0]])
  np.testing.assert_array_equal(samplers.random_length_weights(8, 4).numpy(),
                                np.ones((2, 4)))
