"""The polluted protocol of stal's Table VII (data.occlusion_box): a black box in every
frame, in training and test clips, fixed per frame; the rest of each frame unchanged."""

import numpy as np
import pytest
import tensorflow as tf
import yaml

from tfreid import config as cfg
from tfreid.data import augment
from tfreid.data import pipeline

import data_fixtures

SIDE = 10                 # source pixels
SOURCE = (80, 40)         # stored frames (h, w)
OUT = (64, 32)            # clips (H, W)


@pytest.fixture(scope="module", name="data")
def fixture_data(tmp_path_factory):
  """Each frame one flat colour: R = frame number, G = tracklet id (exact in PNG)."""
  path = str(tmp_path_factory.mktemp("occlusion") / "data")
  data_fixtures.write_tiny_dataset(path, num_ids=4, tracklets_per_id=2, num_frames=(3, 6),
                                   height=SOURCE[0], width=SOURCE[1], frame_format="png",
                                   content="code", num_test_ids=2, seed=3)
  return path


def _config(data, *overrides):
  return cfg.build_config("stal:synthetic", data_dir=str(data), overrides=[
      f"data.height={OUT[0]}", f"data.width={OUT[1]}", "data.seq_len=3",
      "data.num_identities=2", "data.num_instances=2", "data.test_batch_size=4",
      *overrides])


def _np_box_mask(box):
  """[H, W] bool: output pixels whose nearest source pixel (pixel centres at
  half-integers, the resize rule) lies in box (y0, y1, x0, x1), computed by loops."""
  (h, w), (hh, ww) = SOURCE, OUT
  mask = np.zeros(OUT, bool)
  for i in range(hh):
    for j in range(ww):
      r, c = (2 * i + 1) * h // (2 * hh), (2 * j + 1) * w // (2 * ww)
      mask[i, j] = box[0] <= r < box[1] and box[2] <= c < box[3]
  return mask


def _frame_key(clean_frame):
  """(tracklet id, frame number) of a clean "code" frame."""
  return int(clean_frame[0, 0, 1]), int(clean_frame[0, 0, 0])


def _boxes_of(keys):
  return augment.occlusion_boxes(tf.constant(keys, tf.int64),
                                 tf.constant([SOURCE] * len(keys)), SIDE, 7).numpy()


def _check(clean, polluted, allow_mirror=False):
  """Every frame: 0 inside its box's pixels, unchanged outside. Returns the boxes."""
  clean = clean.reshape((-1,) + clean.shape[-3:])
  polluted = polluted.reshape(clean.shape)
  keys = [_frame_key(f) for f in clean]
  boxes = _boxes_of(keys)
  for frame, dirty, box in zip(clean, polluted, boxes):
    assert box[1] - box[0] == SIDE and box[3] - box[2] == SIDE
    assert 0 <= box[0] and box[1] <= SOURCE[0] and 0 <= box[2] and box[3] <= SOURCE[1]
    mask = _np_box_mask(box)
    # A side-10 square of an 80 x 40 frame covers 8 x 8 pixels of the 64 x 32 clip.
    assert mask.sum() == 64
    masks = [mask, mask[:, ::-1]] if allow_mirror else [mask]
    want = [np.where(m[..., None], 0, frame) for m in masks]
    assert any(np.array_equal(dirty, w) for w in want), (box, np.argwhere(dirty != frame))
  return keys, boxes


def _first_batches(dataset, n):
  return [{k: v.numpy() for k, v in batch.items()} for batch, _ in zip(dataset, range(n))]


def test_box_in_training_and_test_clips(data):
  on = ["data.occlusion_box=10", "data.occlusion_seed=7"]
  keys, boxes = {}, {}
  # Training clips (no augmentation, as stal trains), then with flips.
  for aug in ([], ["data.augmentation.flip=true"]):
    clean = _first_batches(pipeline.make_train_dataset(_config(data, *aug),
                                                       streams=("clips",)), 3)
    dirty = _first_batches(pipeline.make_train_dataset(_config(data, *aug, *on),
                                                       streams=("clips",)), 3)
    for a, b in zip(clean, dirty):
      np.testing.assert_array_equal(a["labels"], b["labels"])
      k, bx = _check(a["clips"], b["clips"], allow_mirror=bool(aug))
      keys.update(zip(k, map(tuple, bx)))
  # Test clips of both sides.
  for side in ("query", "gallery"):
    clean = _first_batches(pipeline.make_test_dataset(_config(data), side,
                                                      streams=("clips",)), 10)
    dirty = _first_batches(pipeline.make_test_dataset(_config(data, *on), side,
                                                      streams=("clips",)), 10)
    for a, b in zip(clean, dirty):
      k, bx = _check(a["clips"], b["clips"])
      boxes.update(zip(k, map(tuple, bx)))
  # Frames get different boxes; the box is a function of the frame (seed, tracklet, frame).
  assert len(set(keys.values())) > 3 and len(set(boxes.values())) > 3
  other = augment.occlusion_boxes(tf.constant(list(boxes), tf.int64),
                                  tf.constant([SOURCE] * len(boxes)), SIDE, 8).numpy()
  assert not np.array_equal(other, np.array(list(boxes.values())))


def test_box_larger_than_the_frame_is_clipped():
  boxes = augment.occlusion_boxes(tf.constant([[1, 0], [1, 1]], tf.int64),
                                  tf.constant([[20, 8], [20, 8]]), 25).numpy()
  np.testing.assert_array_equal(boxes[:, [0, 1]], [[0, 20], [0, 20]])
  np.testing.assert_array_equal(boxes[:, [2, 3]], [[0, 8], [0, 8]])


def test_config_field_validation_and_old_files(tmp_path):
  with pytest.raises(cfg.ConfigError, match="occlusion_box"):
    cfg.build_config("stal:synthetic", overrides=["data.occlusion_box=-1"])
  assert cfg.get_experiment("stal:polluted").data.occlusion_box == 25
  # A config.yaml written before the field existed loads with the box off.
  saved = tmp_path / "config.yaml"
  cfg.save_config(cfg.get_experiment("stal:synthetic"), str(saved))
  content = yaml.safe_load(saved.read_text())
  del content["data"]["occlusion_box"], content["data"]["occlusion_seed"]
  saved.write_text(yaml.safe_dump(content))
  assert cfg.load_config(str(saved)).data.occlusion_box == 0
  with pytest.raises(ValueError, match="frame_keys"):
    spec = augment.ClipSpec(4, 4, 1, occlusion_box=2, formats=("png",))
    augment.rgb_clip(tf.constant([tf.io.encode_png(tf.zeros([4, 4, 3], tf.uint8)).numpy()]),
                     True, augment.identity_params(), spec)
