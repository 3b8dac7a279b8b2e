"""data.tracklet_sampler=cross_camera: the K tracklets of an identity in a PK batch come from
distinct cameras (siamese_convgru's cross-camera pairs), deterministically for a seed; the
default `random` choice does not ensure it."""

import numpy as np
import pytest

from tfreid import config as cfg
from tfreid.data import pipeline

import data_fixtures


@pytest.fixture(scope="module", name="three_cameras")
def fixture_three_cameras(tmp_path_factory):
  """6 identities, 6 tracklets each: 2 in each of 3 cameras."""
  path = str(tmp_path_factory.mktemp("cams") / "data")
  data_fixtures.write_tiny_dataset(path, num_ids=6, tracklets_per_id=6, num_frames=(3, 5),
                                   height=16, width=8, cameras=3, seed=1)
  return path


def _batches(data_dir, sampler, seed, steps=12):
  config = cfg.build_config("siamese_convgru:synthetic", overrides=[
      "data.height=16", "data.width=8", "data.seq_len=2", "data.num_identities=3",
      "data.num_instances=2", f"data.tracklet_sampler={sampler}"], data_dir=data_dir)
  dataset = pipeline.make_train_dataset(config, seed=seed)
  out = []
  for batch in dataset.take(steps):
    out.append((batch["labels"].numpy().reshape(3, 2), batch["camids"].numpy().reshape(3, 2)))
  return out


def test_cross_camera_batches_take_distinct_cameras_and_repeat_for_a_seed(three_cameras):
  crossed = _batches(three_cameras, "cross_camera", seed=4)
  for labels, cams in crossed:
    assert (labels[:, 0] == labels[:, 1]).all()
    assert (cams[:, 0] != cams[:, 1]).all()
  again = _batches(three_cameras, "cross_camera", seed=4)
  for (l1, c1), (l2, c2) in zip(crossed, again):
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_array_equal(c1, c2)
  # The random choice takes two tracklets of one camera now and then (1 in 5 per identity).
  plain = _batches(three_cameras, "random", seed=4)
  assert any((cams[:, 0] == cams[:, 1]).any() for _, cams in plain)


def test_unknown_tracklet_sampler_is_refused():
  with pytest.raises(cfg.ConfigError, match="data.tracklet_sampler.*cross_camera"):
    cfg.build_config("siamese_convgru:synthetic", overrides=["data.tracklet_sampler=camera"])
