"""Which frames of a tracklet form a clip: the index computations, in TensorFlow ops.

Every function takes the tracklet length `n` (n >= 1) and the clip length `T` (a Python int)
and returns int32 frame indices in [0, n). They run inside `tf.data` map functions; each
random one is split into a documented draw and a deterministic formula
(`*_indices(n, T, ..., u)`), so a test can recompute it with numpy from the same draws.
The training formulas also take a batch: `n` of shape [N] (and draws with a leading N)
gives [N, T] indices, row r by the formula for n[r]; `sample_train_clips` draws for N
clips at once (the training pipeline samples a whole epoch that way).

Training samplers (one clip per tracklet):

- `consecutive` (nonlocal_i3d section 4.2; a3d section III-D; siamese_convgru section
  V-B): T frames `stride` apart from a random start. The clip spans
  `span = (T - 1) * stride + 1` frames; `start = floor(u * (max(n - span, 0) + 1))` with
  `u ~ U[0, 1)`. When the tracklet is too
  short, the frames that exist (`m = ceil((n - start) / stride)` of them, m < T) are repeated
  cyclically: `index_i = start + stride * (i mod m)`. (Cyclic repetition, as the dense test
  clips below; with stride 1 and n < T the clip is 0, 1, .., n-1, 0, 1, ...)
- `restricted_random` (diversity_attention section 3.1): the tracklet is cut into N = T
  chunks of equal duration, chunk k = [b_k, b_k + l_k) with `b_k = floor(k * n / T)` and
  `l_k = max(floor((k + 1) * n / T) - b_k, 1)`, and one frame is drawn uniformly from each:
  `index_k = b_k + floor(u_k * l_k)`. With n < T some chunks are one repeated frame.
- `random` (torchreid video `random`): T distinct frames drawn uniformly without
  replacement and sorted (n >= T), or T draws with replacement, sorted (n < T). From keys
  `u ~ U[0, 1)^max(n, T)`: n >= T: the T frames with the smallest keys, sorted;
  n < T: `sort(floor(u_i * n))` for i < T.
- `evenly` (torchreid video `evenly`): n >= T: `index_i = i * floor(n / T)`; n < T: 0..n-1
  followed by the last frame repeated (torchreid pads by repeating the last frame).

Test samplers (every clip of a tracklet, `[C, T]`):

- `dense`: the C = ceil(n / T) non-overlapping clips `[cT, cT + T)`; the last one, when
  short (m = n - cT < T frames), repeats its own frames cyclically: `cT + (i mod m)`. Every
  frame appears in exactly one clip; only the last clip's padding repeats frames.
  With a test stride s > 1 (data.test_sample_stride; the spacing of `consecutive`
  training clips of the same stride): the frames of each residue class r = 0..s-1
  (frames r, r + s, r + 2s, ..., n_r = max(ceil((n - r) / s), 0) of them) are cut into
  ceil(n_r / T) non-overlapping clips, the last padded cyclically as above: clip k of
  residue r is `r + s * (kT + (i mod m))`, m = min(n_r - kT, T). Clips are ordered by their
  first frame. Every frame still appears in exactly one clip and consecutive frames of a
  clip are s apart (but in a padded clip); s = 1 is the plain `dense` sampler.
- `chunk_first` (diversity_attention section 4.2, testing): C = 1 clip, the first frame
  `b_k` of each of the T chunks defined above.
"""

from __future__ import annotations

import tensorflow as tf

TRAIN_SAMPLERS = ("consecutive", "restricted_random", "random", "evenly")
TEST_SAMPLERS = ("dense", "chunk_first")


def _n(num_frames) -> tf.Tensor:
  return tf.cast(num_frames, tf.int32)


# ----------------------------------------------------------------------- formulas


def consecutive_indices(num_frames, seq_len: int, stride: int, u) -> tf.Tensor:
  """Consecutive clip from the uniform draw `u` (shape of n, in [0, 1)); see module
  docstring."""
  n = _n(num_frames)[..., None]
  span = (seq_len - 1) * stride + 1
  num_starts = tf.maximum(n - span, 0) + 1
  u = tf.cast(u, tf.float32)[..., None]
  start = tf.minimum(tf.cast(tf.floor(u * tf.cast(num_starts, tf.float32)), tf.int32),
                     num_starts - 1)
  available = (n - start + stride - 1) // stride  # frames start, start+stride, ... < n
  m = tf.minimum(available, seq_len)
  i = tf.range(seq_len, dtype=tf.int32)
  return start + stride * tf.math.floormod(i, m)


def chunk_bounds(num_frames, seq_len: int) -> tuple[tf.Tensor, tf.Tensor]:
  """(b_k, l_k) [..., T] of the T equal chunks of diversity_attention section 3.1."""
  n = _n(num_frames)[..., None]
  k = tf.range(seq_len + 1, dtype=tf.int32)
  edges = (k * n) // seq_len
  starts = edges[..., :-1]
  lengths = tf.maximum(edges[..., 1:] - starts, 1)
  return starts, lengths


def restricted_random_indices(num_frames, seq_len: int, u) -> tf.Tensor:
  """One frame per chunk from the draws `u` ([..., T] in [0, 1)); see module docstring."""
  starts, lengths = chunk_bounds(num_frames, seq_len)
  offset = tf.cast(tf.floor(tf.cast(u, tf.float32) * tf.cast(lengths, tf.float32)), tf.int32)
  return starts + tf.minimum(offset, lengths - 1)


def random_indices(num_frames, seq_len: int, u) -> tf.Tensor:
  """Sorted random frames from the keys `u` ([..., D] in [0, 1), D >= max(n, T)); see
  module docstring (keys past n are not used)."""
  n = _n(num_frames)
  u = tf.cast(u, tf.float32)
  j = tf.range(tf.shape(u)[-1], dtype=tf.int32)
  keys = tf.where(j < n[..., None], u, 2.0)  # never among the T smallest when n >= T
  _, smallest = tf.math.top_k(-keys, k=seq_len)
  without_replacement = tf.sort(tf.cast(smallest, tf.int32), axis=-1)
  draws = tf.cast(tf.floor(u[..., :seq_len] * tf.cast(n[..., None], tf.float32)), tf.int32)
  with_replacement = tf.sort(tf.minimum(draws, n[..., None] - 1), axis=-1)
  return tf.where((n >= seq_len)[..., None], without_replacement, with_replacement)


def evenly_indices(num_frames, seq_len: int) -> tf.Tensor:
  """torchreid's `evenly` sampling; see module docstring."""
  n = _n(num_frames)[..., None]
  i = tf.range(seq_len, dtype=tf.int32)
  return tf.where(n >= seq_len, i * tf.maximum(n // seq_len, 1), tf.minimum(i, n - 1))


def dense_indices(num_frames, seq_len: int, stride: int = 1) -> tf.Tensor:
  """All non-overlapping clips, [C, T]; the last of each residue class padded cyclically.

  stride 1: the C = ceil(n / T) clips of consecutive frames; stride s > 1: clips of frames
  s apart (module docstring), C = sum_r ceil(n_r / T).
  """
  if stride > 1:
    return _strided_dense_indices(num_frames, seq_len, stride)
  n = _n(num_frames)
  num_clips = (n + seq_len - 1) // seq_len
  c = tf.range(num_clips, dtype=tf.int32)[:, None]
  i = tf.range(seq_len, dtype=tf.int32)[None, :]
  start = c * seq_len
  m = tf.minimum(n - start, seq_len)
  return start + tf.math.floormod(i, m)


def _strided_dense_indices(num_frames, seq_len: int, stride: int) -> tf.Tensor:
  n = _n(num_frames)
  residues = tf.range(stride, dtype=tf.int32)
  per_residue = tf.maximum((n - residues + stride - 1) // stride, 0)  # n_r
  clips_per_residue = (per_residue + seq_len - 1) // seq_len
  residue = tf.repeat(residues, clips_per_residue)  # [C]
  k = tf.range(tf.reduce_sum(clips_per_residue), dtype=tf.int32) - tf.repeat(
      tf.cumsum(clips_per_residue, exclusive=True), clips_per_residue)
  m = tf.minimum(tf.gather(per_residue, residue) - k * seq_len, seq_len)
  i = tf.range(seq_len, dtype=tf.int32)[None, :]
  clips = residue[:, None] + stride * (k[:, None] * seq_len + tf.math.floormod(i, m[:, None]))
  return tf.gather(clips, tf.argsort(clips[:, 0]))  # first frames are distinct


def chunk_first_indices(num_frames, seq_len: int) -> tf.Tensor:
  """The first frame of each chunk, [1, T] (diversity_attention testing)."""
  starts, _ = chunk_bounds(num_frames, seq_len)
  return tf.reshape(starts, [1, seq_len])


# ------------------------------------------------------------------ with the draws


def _check_train_sampler(sampler: str) -> None:
  if sampler not in TRAIN_SAMPLERS:
    raise ValueError(f"unknown training sampler {sampler!r}; expected one of "
                     f"{', '.join(TRAIN_SAMPLERS)}.")


def train_draws(sampler: str, num_frames, seq_len: int, seed) -> tf.Tensor:
  """The uniform draws a training sampler uses, from a stateless seed ([2] int).

  `num_frames` scalar: one clip's draws; [N]: those of N clips (leading dimension N; the
  `random` keys are then max(max(n), T) wide).
  """
  _check_train_sampler(sampler)
  n = _n(num_frames)
  lead = tf.shape(n)
  if sampler == "consecutive":
    return tf.random.stateless_uniform(lead, seed)
  if sampler == "restricted_random":
    return tf.random.stateless_uniform(tf.concat([lead, [seq_len]], 0), seed)
  if sampler == "random":
    width = tf.maximum(tf.reduce_max(n), seq_len)
    return tf.random.stateless_uniform(tf.concat([lead, [width]], 0), seed)
  return tf.zeros(tf.concat([lead, [0]], 0))


def _indices(sampler: str, num_frames, seq_len: int, stride: int, u) -> tf.Tensor:
  if sampler == "consecutive":
    return consecutive_indices(num_frames, seq_len, stride, u)
  if sampler == "restricted_random":
    return restricted_random_indices(num_frames, seq_len, u)
  if sampler == "random":
    return random_indices(num_frames, seq_len, u)
  return evenly_indices(num_frames, seq_len)


def sample_train_clip(sampler: str, num_frames, seq_len: int, stride: int, seed) -> tf.Tensor:
  """[T] frame indices of one training clip; `seed` is a stateless seed ([2] int)."""
  num_frames = tf.reshape(_n(num_frames), [])
  u = train_draws(sampler, num_frames, seq_len, seed)
  return _indices(sampler, num_frames, seq_len, stride, u)


def sample_train_clips(sampler: str, num_frames, seq_len: int, stride: int, seed
                       ) -> tf.Tensor:
  """[N, T] frame indices of N training clips of tracklets of lengths `num_frames` ([N]),
  all drawn from one stateless seed ([2] int); row r follows the formula for n[r]."""
  num_frames = tf.reshape(_n(num_frames), [-1])
  u = train_draws(sampler, num_frames, seq_len, seed)
  return _indices(sampler, num_frames, seq_len, stride, u)


def _check_test_stride(sampler: str, stride: int) -> None:
  if stride < 1 or (stride > 1 and sampler != "dense"):
    raise ValueError(f"test stride {stride}: the dense test sampler takes a stride >= 1, "
                     f"the others 1 only (got test sampler {sampler!r}).")


def random_length_indices(num_frames, length: int, seq_len: int, seed) -> tf.Tensor:
  """L = `length` frames of a tracklet as [ceil(L / T), T] test clips (stal, section IV-E,
  fig. 11: probe and gallery sequences of a fixed length L).

  The paper: "If the real length of a video is greater than L, we randomly selected L frames
  as the testing sequence; otherwise, we used the whole sequence and randomly sampled other
  frames to complement the L length." So with n >= L frames: L distinct frames drawn
  uniformly; with n < L: every frame once plus L - n frames drawn uniformly with
  replacement. The chosen frames are kept in time order (the paper's model treats frames as
  independent; a temporal model then still sees them in order). Filling T-frame clips, the L
  frames repeat cyclically up to a multiple of T (library choice): every frame appears the
  same number of times when L divides T or T divides L, as with the paper's powers of two.
  `seed`: a stateless seed [2] (the same seed draws the same frames).
  """
  n = _n(num_frames)
  seed = tf.cast(seed, tf.int32)
  keys = tf.random.stateless_uniform(tf.reshape(n, [1]), seed)

  def distinct():
    return tf.sort(tf.argsort(keys)[:length])

  def complemented():
    extra = tf.random.stateless_uniform([length], seed + 1, minval=0, maxval=n,
                                        dtype=tf.int32)[:tf.maximum(length - n, 0)]
    return tf.sort(tf.concat([tf.range(n, dtype=tf.int32), extra], axis=0))

  chosen = tf.cond(n >= length, distinct, complemented)
  chosen = tf.ensure_shape(tf.cast(chosen, tf.int32), [length])
  num_clips = -(-length // seq_len)
  return tf.reshape(tf.gather(chosen, tf.range(num_clips * seq_len) % length),
                    [num_clips, seq_len])


def test_clips(sampler: str, num_frames, seq_len: int, stride: int = 1) -> tf.Tensor:
  """[C, T] frame indices of every test clip of a tracklet; `stride`: frame step inside a
  `dense` clip (data.test_sample_stride)."""
  _check_test_stride(sampler, stride)
  if sampler == "dense":
    return dense_indices(num_frames, seq_len, stride)
  if sampler == "chunk_first":
    return chunk_first_indices(num_frames, seq_len)
  raise ValueError(f"unknown test sampler {sampler!r}; expected one of "
                   f"{', '.join(TEST_SAMPLERS)}.")


def first_occurrences(clip_index) -> tf.Tensor:
  """[C, T] frame indices -> float32 [C, T]: 1 where a frame appears for the first time
  (row-major order), 0 where it repeats (the cyclic padding of a tracklet's last clip).
  A method that sums over every frame of a tracklet weighs frames by this, so each counts
  once (`tfreid.models.contract.tracklet_statistics`)."""
  clip_index = tf.convert_to_tensor(clip_index)
  flat = tf.reshape(clip_index, [-1])
  _, slot = tf.unique(flat)
  positions = tf.range(tf.size(flat))
  first = tf.math.unsorted_segment_min(positions, slot, tf.reduce_max(slot) + 1)
  return tf.reshape(tf.cast(tf.equal(tf.gather(first, slot), positions), tf.float32),
                    tf.shape(clip_index))


def random_length_weights(length: int, seq_len: int) -> tf.Tensor:
  """[ceil(L / T), T] float32 weights of `random_length_indices`' clips: 1 for the L drawn
  frames (the paper's complementing repeats included), 0 for the cyclic fill after them."""
  num_clips = -(-length // seq_len)
  return tf.reshape(tf.cast(tf.range(num_clips * seq_len) < length, tf.float32),
                    [num_clips, seq_len])


def num_test_clips(sampler: str, num_frames, seq_len: int, stride: int = 1):
  """Clips per tracklet of a test sampler (numpy or Python ints in, same out)."""
  _check_test_stride(sampler, stride)
  if sampler == "dense":
    total = 0
    for r in range(stride):
      per_residue = (num_frames - r + stride - 1) // stride
      per_residue = per_residue * (per_residue > 0)
      total = total + (per_residue + seq_len - 1) // seq_len
    return total
  if sampler == "chunk_first":
    return num_frames * 0 + 1
  raise ValueError(f"unknown test sampler {sampler!r}; expected one of "
                   f"{', '.join(TEST_SAMPLERS)}.")


# ------------------------------------------------------- which tracklets of an identity

TRACKLET_SAMPLERS = ("random", "cross_camera")


def cross_camera_keys(keys, camids, valid) -> tf.Tensor:
  """Sort keys that make an identity's K smallest tracklets come from distinct cameras.

  `data.tracklet_sampler=cross_camera` (siamese_convgru section V-B: pairs of the same person
  "under disjoint cameras"). keys [N, W]: uniform draws of the W tracklet slots of N
  identities; camids [N, W]: each slot's camera; valid [N, W] bool: the slot holds a
  tracklet. The key of slot i becomes `rank_i + keys_i`, where rank_i counts the valid slots
  of the same camera with a smaller draw: the K smallest are then one random tracklet from
  each of K cameras (in random camera order) when the identity was seen by >= K cameras,
  otherwise one from every camera first, then second tracklets, and so on. Invalid slots get
  W + 2, above every valid key.
  """
  keys = tf.cast(keys, tf.float32)
  camids = tf.cast(camids, tf.int32)
  same = tf.equal(camids[:, :, None], camids[:, None, :])
  earlier = keys[:, None, :] < keys[:, :, None]          # [n, i, j]: draw j below draw i
  rank = tf.reduce_sum(tf.cast(same & earlier & valid[:, None, :], tf.float32), axis=-1)
  width = tf.cast(tf.shape(keys)[-1], tf.float32)
  return tf.where(valid, rank + keys, width + 2.0)
