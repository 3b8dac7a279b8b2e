"""The converted-dataset reader (tfreid/data/reader.py): partitions, metadata, bad input."""

import json
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

import data_fixtures
from tfreid.data import reader
from tfreid.data import schema


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("reader") / "ds")
  manifest = data_fixtures.write_tiny_dataset(
      path, num_ids=3, tracklets_per_id=3, num_frames=(2, 7), height=16, width=8, cameras=2,
      num_test_ids=2, with_flow=True, frame_format="png", content="code", shards_per_group=2)
  return path, manifest


def all_records(data_dir, manifest):
  """tracklet id -> (shard file, parsed Example), read with tf.data (independently)."""
  out = {}
  for shard in manifest["shards"]:
    path = os.path.join(data_dir, shard["file"])
    for record in tf.data.TFRecordDataset(path):
      example = tf.train.Example.FromString(record.numpy())
      tid = example.features.feature[schema.TRACKLET_ID].int64_list.value[0]
      out[tid] = (path, example, record.numpy())
  return out


def feature(example, key):
  f = example.features.feature[key]
  return (f.int64_list.value or f.bytes_list.value)[0]


def test_crc32c_known_value(tmp_path):
  assert reader.crc32c(b"123456789") == 0xE3069283
  # The masked CRC of a length, as TFRecordWriter frames it.
  path = str(tmp_path / "crc.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(b"abc")
  with open(path, "rb") as f:
    header = f.read(12)
  assert struct.unpack("<I", header[8:])[0] == reader.masked_crc32c(header[:8])


def test_train_partition_metadata(dataset):
  data_dir, manifest = dataset
  index = reader.load_partition(data_dir, "train")
  split = manifest["splits"][0]
  np.testing.assert_array_equal(index.tracklet_ids, split["train"])
  records = all_records(data_dir, manifest)
  for i, tid in enumerate(index.tracklet_ids):
    path, example, raw = records[int(tid)]
    assert index.pids[i] == feature(example, schema.PID)
    assert index.camids[i] == feature(example, schema.CAMID)
    assert index.num_frames[i] == feature(example, schema.NUM_FRAMES)
    assert index.labels[i] == split["train_pids"].index(index.pids[i])
    assert (index.heights[i], index.widths[i]) == (16, 8)
    assert index.shard_files[index.shard_index[i]] == path
    # The offset points at the record's framing: length, CRC, then the Example.
    with open(path, "rb") as f:
      f.seek(index.offsets[i])
      length = struct.unpack("<Q", f.read(8))[0]
      f.read(4)
      assert length == index.lengths[i] and f.read(length) == raw
  assert index.num_classes == 3 and index.is_png.all() and index.has_flow.all()
  assert not index.has_keypoints.any()
  assert len(index.shard_files) == 2  # only the train shards were read
  assert all("-train-" in f for f in index.shard_files)
  assert index.dominant_size() == (16, 8)


def test_protocols_resolve_query_and_gallery(dataset):
  data_dir, manifest = dataset
  split = manifest["splits"][0]
  query = reader.load_partition(data_dir, "query")
  gallery = reader.load_partition(data_dir, "gallery")
  assert gallery.protocol == "torchreid" and gallery.partition == "gallery"
  np.testing.assert_array_equal(query.tracklet_ids, split["query"])
  np.testing.assert_array_equal(gallery.tracklet_ids, split["gallery"])
  assert (query.labels == -1).all() and all("-test-" in f for f in query.shard_files)
  matlab = reader.load_partition(data_dir, "gallery", protocol="mars_matlab")
  assert matlab.partition == "gallery_all"
  np.testing.assert_array_equal(matlab.tracklet_ids, split["gallery_all"])
  direct = reader.load_partition(data_dir, "gallery_all")
  np.testing.assert_array_equal(direct.pids, matlab.pids)


def test_unknown_names_are_errors_listing_the_choices(dataset):
  data_dir, _ = dataset
  with pytest.raises(reader.DatasetError, match="torchreid, mars_matlab"):
    reader.load_partition(data_dir, "query", protocol="market")
  with pytest.raises(reader.DatasetError, match="train, query, gallery, gallery_all"):
    reader.load_partition(data_dir, "probe")
  with pytest.raises(reader.DatasetError, match="1 split"):
    reader.load_partition(data_dir, "train", split=3)
  with pytest.raises(reader.DatasetError, match="no manifest.json"):
    reader.load_partition(os.path.dirname(data_dir), "train")


def copy_dataset(src, dst):
  os.makedirs(dst)
  for name in os.listdir(src):
    with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
      g.write(f.read())
  with open(os.path.join(dst, schema.MANIFEST_NAME)) as f:
    return json.load(f)


def test_empty_partition_names_partition_and_manifest(dataset, tmp_path):
  data_dir, _ = dataset
  copy = str(tmp_path / "empty")
  manifest = copy_dataset(data_dir, copy)
  manifest["splits"][0]["query"] = []
  schema.write_manifest(copy, manifest)
  with pytest.raises(reader.DatasetError) as error:
    reader.load_partition(copy, "query")
  assert "'query'" in str(error.value) and os.path.join(copy, "manifest.json") in str(error.value)


def test_corrupt_shard_is_named_and_only_its_group_matters(dataset, tmp_path):
  data_dir, manifest = dataset
  copy = str(tmp_path / "corrupt")
  copy_dataset(data_dir, copy)
  test_shard = [s for s in manifest["shards"] if s["group"] == "test"][1]["file"]
  path = os.path.join(copy, test_shard)
  index = reader.load_partition(data_dir, "gallery_all")
  rows = index.shard_index == index.shard_files.index(os.path.join(data_dir, test_shard))
  second = int(np.sort(index.offsets[rows])[1])
  with open(path, "r+b") as f:  # break the length of the shard's second record
    f.seek(second)
    f.write(b"\xff\xff")
  train = reader.load_partition(copy, "train")  # reads no test shard
  assert len(train) == 9
  with pytest.raises(reader.DatasetError) as error:
    reader.load_partition(copy, "gallery_all")
  assert test_shard in str(error.value) and "skip_corrupt" in str(error.value)
  kept = reader.load_partition(copy, "gallery_all", skip_corrupt=True)
  assert len(kept) == len(index) - (rows.sum() - 1) and kept.skipped


def test_tracklet_missing_from_the_shards(dataset, tmp_path):
  data_dir, _ = dataset
  copy = str(tmp_path / "missing")
  manifest = copy_dataset(data_dir, copy)
  manifest["splits"][0]["query"].append(999)
  schema.write_manifest(copy, manifest)
  with pytest.raises(reader.DatasetError, match=r"ids \[999\]"):
    reader.load_partition(copy, "query")
  assert 999 not in reader.load_partition(copy, "query", skip_corrupt=True).tracklet_ids


def test_missing_stream_says_which_converter_flag(dataset):
  data_dir, _ = dataset
  index = reader.load_partition(data_dir, "train")
  reader.check_streams(index, use_flow=True, use_keypoints=False)
  with pytest.raises(reader.DatasetError, match="--keypoints=FILE"):
    reader.check_streams(index, use_flow=False, use_keypoints=True)
  no_flow = dict(index.manifest)
  no_flow.pop("flow")
  index.manifest = no_flow
  with pytest.raises(reader.DatasetError, match="--optical_flow"):
    reader.check_streams(index, use_flow=True, use_keypoints=False)


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("reader") / "streams")
  manifest = data_fixtures.write_tiny_dataset(
      path, num_ids=2, tracklets_per_id=2, num_frames=(3, 6), height=16, width=8,
      with_flow=True, with_keypoints=True, frame_format="jpeg", content="code",
      shards_per_group=2)
  return path, manifest


def test_record_reader_returns_the_records_streams(streams):
  data_dir, manifest = streams
  index = reader.load_partition(data_dir, "train")
  records = all_records(data_dir, manifest)
  source = reader.RecordReader(index, use_flow=True, use_keypoints=True)
  for row, tid in enumerate(index.tracklet_ids):
    feature_of = records[int(tid)][1].features.feature
    frames = list(feature_of[schema.FRAMES].bytes_list.value)
    flow = list(feature_of[schema.FLOW].bytes_list.value)
    joints = np.reshape(feature_of[schema.KEYPOINTS].float_list.value, [-1, 14, 3])
    present = list(feature_of[schema.KEYPOINTS_PRESENT].int64_list.value)
    arrays, valid = source.tracklet(row)
    assert valid and arrays.frames.tolist() == frames and arrays.flow.tolist() == flow
    np.testing.assert_array_equal(arrays.keypoints, joints)
    assert arrays.keypoints.dtype == np.float32 and arrays.present.tolist() == present
    # Clips: the frames asked for, in the order asked (repeats allowed).
    pick = [len(frames) - 1, 0, 0, 1]
    (clip,), valid = source.clips([row], [pick])
    assert valid.tolist() == [True]
    assert clip.frames.tolist() == [frames[i] for i in pick]
    assert clip.flow.tolist() == [flow[i] for i in pick]
    np.testing.assert_array_equal(clip.keypoints, joints[pick])
    assert clip.present.tolist() == [present[i] for i in pick]
  # Streams not asked for are not converted.
  arrays, _ = reader.RecordReader(index).tracklet(0)
  assert arrays.flow is None and arrays.keypoints is None and arrays.present is None


def _flip_byte(path, offset):
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("damage,reason", [
    ("data", "its data fails its checksum"),
    ("length", "its length fails its checksum"),
    ("truncate", "truncated"),
    ("delete", "the shard cannot be opened"),
    ("other_tracklet", "where the index expects tracklet"),
])
def test_record_reader_names_the_record_and_what_is_wrong(streams, tmp_path, damage, reason):
  data_dir, _ = streams
  copy = str(tmp_path / "copy")
  copy_dataset(data_dir, copy)
  index = reader.load_partition(copy, "train")
  row = 1
  path, offset = index.shard_files[index.shard_index[row]], int(index.offsets[row])
  tid = int(index.tracklet_ids[row])
  if damage == "data":
    _flip_byte(path, offset + 12 + int(index.lengths[row]) // 2)
  elif damage == "length":
    _flip_byte(path, offset + 1)
  elif damage == "truncate":
    os.truncate(path, offset + 12 + int(index.lengths[row]) - 5)
  elif damage == "delete":
    os.remove(path)
  else:  # the index says another tracklet lives there
    index.tracklet_ids = index.tracklet_ids.copy()
    index.tracklet_ids[row] = tid = 999
  open_files = len(os.listdir("/proc/self/fd"))
  with pytest.raises(reader.DatasetError) as error:
    reader.RecordReader(index, use_flow=True).tracklet(row)
  assert len(os.listdir("/proc/self/fd")) == open_files  # the shard was closed
  message = str(error.value)
  for part in (f"shard {path}", f"byte offset {offset}", f"tracklet id {tid}", reason,
               "data.skip_corrupt=true"):
    assert part in message, (part, message)
  # Skipped: reported once per read, with placeholders of the asked-for length.
  skipped = []
  source = reader.RecordReader(index, use_flow=True, use_keypoints=True, skip_corrupt=True,
                               on_skip=lambda *args: skipped.append(args))
  arrays, valid = source.tracklet(row)
  assert not valid and arrays.frames.tolist() == [b""] * int(index.num_frames[row])
  assert arrays.flow.tolist() == [b""] * int(index.num_frames[row])
  assert arrays.keypoints.shape == (int(index.num_frames[row]), 14, 3)
  assert not arrays.keypoints.any() and not arrays.present.any()
  # A record of another shard in the same call is unaffected.
  other = int(np.flatnonzero(index.shard_index != index.shard_index[row])[0])
  clips, valid = source.clips([other, row], [[0, 0], [1, 0]])
  assert valid.tolist() == [True, False] and clips[1].frames.tolist() == [b"", b""]
  assert clips[0].frames[0] != b""
  assert skipped == [(path, offset, tid, skipped[0][3])] * 2 and reason in skipped[0][3]


# ------------------------------------------------------------- damaged frames (valid CRC)


def damage_frame(data_dir, tracklet_id, frame, damage):
  """Rewrites the shard holding `tracklet_id` with frame `frame` of its record replaced by
  damage(bytes) and every record framed anew (valid CRCs): a source frame damaged before
  conversion. Returns (shard path, the frame's name)."""
  manifest = schema.read_manifest(data_dir)
  for shard in manifest["shards"]:
    path = os.path.join(data_dir, shard["file"])
    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    for i, raw in enumerate(records):
      example = tf.train.Example.FromString(raw)
      feature_of = example.features.feature
      if feature_of[schema.TRACKLET_ID].int64_list.value[0] != tracklet_id:
        continue
      frames = feature_of[schema.FRAMES].bytes_list.value
      frames[frame] = damage(frames[frame])
      records[i] = example.SerializeToString()
      with tf.io.TFRecordWriter(path) as writer:
        for record in records:
          writer.write(record)
      return path, feature_of[schema.FRAME_NAMES].bytes_list.value[frame].decode()
  raise AssertionError(f"tracklet {tracklet_id} is in no shard")


def _flip_marker(jpeg):
  """The JPEG with two bytes in the middle of its compressed data set to 0xFF42, no
  marker a scan may hold (as two damaged bytes, or one next to a 0xFF, make)."""
  scan = jpeg.index(b"\xff\xda")
  start = scan + 2 + (jpeg[scan + 2] << 8 | jpeg[scan + 3])
  middle = (start + len(jpeg)) // 2
  while jpeg[middle - 1] == 0xFF:
    middle += 1
  return jpeg[:middle] + b"\xff\x42" + jpeg[middle + 2:]


@pytest.mark.parametrize("damage,reason", [
    (lambda jpeg: jpeg[:len(jpeg) * 2 // 3],
     "(truncated)"),
    (lambda jpeg: jpeg[:-2], "without an end-of-image marker (truncated)"),
    (lambda jpeg: jpeg[:300], "truncated"),
    (_flip_marker, "unexpected marker 0xff42 at byte"),
])
def test_a_damaged_frame_inside_a_valid_record_is_named(streams, tmp_path, damage, reason):
  data_dir, _ = streams
  copy = str(tmp_path / "copy")
  copy_dataset(data_dir, copy)
  index = reader.load_partition(copy, "train")
  row, frame = 1, 1
  tid = int(index.tracklet_ids[row])
  path, name = damage_frame(copy, tid, frame, damage)
  index = reader.load_partition(copy, "train")  # the shard was rewritten: offsets moved
  offset = int(index.offsets[row])
  # TensorFlow's decoder alone does not say which file is damaged, or says nothing.
  bad = reader.RecordReader(index, skip_corrupt=True, on_skip=lambda *a: None)
  with pytest.raises(reader.DatasetError) as error:
    reader.RecordReader(index).tracklet(row)
  message = str(error.value)
  for part in (f"shard {path}", f"byte offset {offset}", f"tracklet id {tid}",
               f"frame {frame} ({name}) is a damaged JPEG image", reason,
               "data.skip_corrupt=true"):
    assert part in message, (part, message)
  # Clips without the damaged frame are read; a clip with it is skipped and reported.
  skipped = []
  source = reader.RecordReader(index, skip_corrupt=True,
                               on_skip=lambda *args: skipped.append(args))
  clips, valid = source.clips([row, row], [[0, 0], [0, frame]])
  assert valid.tolist() == [True, False] and clips[1].frames.tolist() == [b"", b""]
  assert len(skipped) == 1 and skipped[0][:3] == (path, offset, tid)
  assert f"frame {frame} ({name})" in skipped[0][3]
  arrays, valid = bad.tracklet(row)
  assert not valid and arrays.frames.tolist() == [b""] * int(index.num_frames[row])
  # Every other record of the partition reads as before.
  for other in range(len(index)):
    if other != row:
      assert source.tracklet(other)[1]


def test_image_checks_accept_whole_files_and_name_damage():
  import cv2  # pylint: disable=import-outside-toplevel
  from tfreid.data import image_check  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, [48, 32, 3], np.uint8)
  encoded = {
      "baseline": cv2.imencode(".jpg", image)[1].tobytes(),
      "restart": cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_RST_INTERVAL, 2])[1].tobytes(),
      "progressive": cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
      "gray": cv2.imencode(".jpg", image[..., 0])[1].tobytes(),
  }
  for kind, jpeg in encoded.items():
    assert image_check.jpeg_problem(jpeg) is None, kind
    assert image_check.jpeg_problem(jpeg + b"\x00\x00trailing") is None, kind
    for cut in (1, 2, 3, len(jpeg) // 2, 200):
      assert "truncated" in image_check.jpeg_problem(jpeg[:-cut]), (kind, cut)
  # Restart markers out of order (0 and 1 swapped).
  jpeg = encoded["restart"]
  first, second = jpeg.index(b"\xff\xd0"), jpeg.index(b"\xff\xd1")
  swapped = bytearray(jpeg)
  swapped[first + 1], swapped[second + 1] = 0xD1, 0xD0
  assert "restart marker 1 at byte" in image_check.jpeg_problem(bytes(swapped))
  assert "start-of-image" in image_check.jpeg_problem(b"GIF89a" + jpeg)
  # A frame header that declares an empty image.
  sof = encoded["baseline"].index(b"\xff\xc0")
  empty = bytearray(encoded["baseline"])
  empty[sof + 5:sof + 7] = b"\x00\x00"
  assert "frame header is invalid" in image_check.jpeg_problem(bytes(empty))
  png = cv2.imencode(".png", image)[1].tobytes()
  assert image_check.png_problem(png) is None
  assert "truncated" in image_check.png_problem(png[:-20])
  flipped = bytearray(png)
  flipped[len(png) // 2] ^= 0x01
  assert "fails its CRC" in image_check.png_problem(bytes(flipped))
  assert image_check.frame_problem(png, "png") is None
  assert image_check.frame_problem(png, "jpeg") is not None
