"""Shard writing: bad frames, shard groups and sizes, resume, determinism, parallel workers."""

import hashlib
import json
import os
import re
import struct

import pytest
import tensorflow as tf

from data_pipelines import convert
from data_pipelines import shards
import convert_fakes as fakes


def _convert(src, dst, **kw):
  kw.setdefault("progress", False)
  return convert.convert("mars", str(src), str(dst), **kw)


def _digest(output_dir):
  """{file name: sha256} of everything a conversion leaves (state file excluded)."""
  out = {}
  for name in sorted(os.listdir(output_dir)):
    if name == shards.STATE_NAME:
      continue
    with open(os.path.join(output_dir, name), "rb") as f:
      out[name] = hashlib.sha256(f.read()).hexdigest()
  return out


def test_corrupt_missing_and_empty_frames_are_skipped_and_listed(tmp_path):
  src, dst = tmp_path / "mars", tmp_path / "out"
  paths = fakes.write_mars(str(src))
  truncated = paths["train"][2][1]          # 2nd frame of train row 3 (pid 2, 4 frames)
  data = fakes.read_bytes(str(src), truncated)
  fakes.write_file(os.path.join(src, *truncated.split("/")), data[:len(data) // 2])
  empty = paths["train"][0][0]
  fakes.write_file(os.path.join(src, *empty.split("/")), b"")
  missing = paths["test"][3][2]
  os.remove(os.path.join(src, *missing.split("/")))
  dead = paths["test"][1]                    # gallery row 2: every frame is garbage
  for p in dead:
    fakes.write_file(os.path.join(src, *p.split("/")), b"\xff\xd8\xff\xe0 not a jpeg")
  manifest = _convert(src, dst)

  reasons = {s["path"]: s["reason"] for s in manifest["skipped_frames"]}
  assert reasons == {empty: "empty file",
                     truncated: "does not decode (truncated or corrupt image)",
                     missing: "missing file",
                     dead[0]: "does not decode (truncated or corrupt image)",
                     dead[1]: "does not decode (truncated or corrupt image)"}
  assert manifest["dropped_tracklets"] == [{
      "tracklet": "info/tracks_test_info.mat row 2 (pid 3, camera 2)",
      "reason": "all 2 frames skipped (see skipped_frames)"}]
  n_train = len(fakes.MARS_TRAIN)
  dead_id = n_train + 1
  split = manifest["splits"][0]
  assert dead_id not in split["gallery"] and dead_id not in split["gallery_all"]
  assert manifest["partitions"]["train"]["frames"] == sum(n for _, _, n in fakes.MARS_TRAIN) - 2
  assert manifest["partitions"]["gallery"]["tracklets"] == 3
  assert manifest["num_tracklets"] == n_train + len(fakes.MARS_TEST) - 1
  records = fakes.read_all(str(dst))
  assert dead_id not in records
  rec = records[2]
  assert rec["frame_names"] == [p for p in paths["train"][2] if p != truncated]
  assert list(rec["frame_numbers"]) == [1, 3, 4] and rec["num_frames"] == 3
  assert rec["frames"] == [fakes.read_bytes(str(src), p) for p in rec["frame_names"]]
  test_shard = [s for s in manifest["shards"] if s["group"] == "test"]
  assert sum(s["num_records"] for s in test_shard) == len(fakes.MARS_TEST) - 1


def test_shard_groups_sizes_and_random_access(tmp_path):
  src, dst = tmp_path / "mars", tmp_path / "out"
  fakes.write_mars(str(src))
  budget_mb = 3000 / 2**20
  manifest = _convert(src, dst, shard_size_mb=budget_mb)
  shard_list = manifest["shards"]
  groups = [s["group"] for s in shard_list]
  assert groups == sorted(groups, key=["train", "test"].index) and len(shard_list) > 2
  ids_by_group = {"train": set(manifest["splits"][0]["train"])}
  records = fakes.read_all(str(dst))
  for shard in shard_list:
    path = os.path.join(dst, shard["file"])
    assert shards.count_records(path) == shard["num_records"]
    assert os.path.getsize(path) == shard["bytes"]
    parsed = [fakes.parse_record(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    in_train = {r["tracklet_id"] in ids_by_group["train"] for r in parsed}
    assert in_train == {shard["group"] == "train"}
    # A shard goes over budget only when it holds a single tracklet.
    src_bytes = sum(len(f) for r in parsed for f in r["frames"])
    assert src_bytes <= 3000 or len(parsed) == 1
  with open(dst / "tracklets.csv") as f:
    lines = f.read().splitlines()
  assert len(lines) == 1 + len(records)
  header = lines[0].split(",")
  for line in lines[1:]:
    row = dict(zip(header, line.split(",", len(header) - 1)))
    rec = fakes.parse_record(shards.read_record(str(dst / row["shard"]), int(row["offset"])))
    assert rec["tracklet_id"] == int(row["tracklet_id"])
    assert rec["num_frames"] == int(row["num_frames"]) and rec["pid"] == int(row["pid"])
  with open(dst / shard_list[0]["file"], "rb") as f:
    data = f.read()
  cut = tmp_path / "cut.tfrecord"
  cut.write_bytes(data[:-3])
  with pytest.raises(ValueError, match="truncated"):
    shards.count_records(str(cut))


def test_resume_after_interruption_rewrites_only_missing_shards(tmp_path, monkeypatch):
  src = tmp_path / "mars"
  fakes.write_mars(str(src))
  small = 2500 / 2**20
  reference = tmp_path / "reference"
  _convert(src, reference, shard_size_mb=small)
  want = _digest(reference)
  num_shards = len([n for n in want if n.endswith(".tfrecord")])
  assert num_shards >= 4

  # Interrupt the conversion on the 6th tracklet (after at least one shard is complete).
  dst = tmp_path / "out"
  real = shards.read_tracklet
  calls = []

  def flaky(*args, **kw):
    calls.append(1)
    if len(calls) == 6:
      raise KeyboardInterrupt
    return real(*args, **kw)

  monkeypatch.setattr(shards, "read_tracklet", flaky)
  with pytest.raises(KeyboardInterrupt):
    _convert(src, dst, shard_size_mb=small)
  monkeypatch.setattr(shards, "read_tracklet", real)
  left = sorted(os.listdir(dst))
  assert not [n for n in left if n.endswith(".tmp")] and "manifest.json" not in left
  done = [n for n in left if n.endswith(".tfrecord")]
  assert 1 <= len(done) < num_shards
  for name in done:  # every shard on disk is complete and identical to the reference
    assert _digest(dst)[name] == want[name]
  stamps = {n: os.stat(dst / n).st_mtime_ns for n in done}

  # A stale temp file from a killed run is cleaned up; completed shards are not rewritten.
  (dst / (done[0] + ".tmp")).write_bytes(b"half a shard")
  manifest = _convert(src, dst, shard_size_mb=small)
  assert {n: os.stat(dst / n).st_mtime_ns for n in done} == stamps
  assert _digest(dst) == want
  assert len(manifest["shards"]) == num_shards

  # A shard deleted (or damaged) after the fact is rewritten on the next run, the rest kept.
  victim = sorted(done)[0]
  os.remove(dst / victim)
  other = [n for n in want if n.endswith(".tfrecord") and n != victim]
  stamps = {n: os.stat(dst / n).st_mtime_ns for n in other}
  _convert(src, dst, shard_size_mb=small)
  assert {n: os.stat(dst / n).st_mtime_ns for n in other} == stamps
  assert _digest(dst) == want


def test_other_options_in_same_output_dir_need_overwrite(tmp_path):
  src, dst = tmp_path / "mars", tmp_path / "out"
  fakes.write_mars(str(src))
  _convert(src, dst)
  with pytest.raises(shards.ConversionError, match="--overwrite"):
    _convert(src, dst, shard_size_mb=2000 / 2**20)
  manifest = _convert(src, dst, shard_size_mb=2000 / 2**20, overwrite=True)
  files = {s["file"] for s in manifest["shards"]}
  assert {n for n in os.listdir(dst) if n.endswith(".tfrecord")} == files


def test_deterministic_and_worker_count_independent_with_progress(tmp_path, capsys):
  src = tmp_path / "mars"
  fakes.write_mars(str(src))
  one = _convert(src, tmp_path / "one", shard_size_mb=4000 / 2**20, optical_flow=True,
                 progress=True)
  err = capsys.readouterr().err
  assert "ETA" in err and "frames/s" in err and "100.0%" in err
  _convert(src, tmp_path / "again", shard_size_mb=4000 / 2**20, optical_flow=True)
  two = _convert(src, tmp_path / "two", shard_size_mb=4000 / 2**20, optical_flow=True,
                 num_workers=2)
  assert _digest(tmp_path / "one") == _digest(tmp_path / "again") == _digest(tmp_path / "two")
  assert one == two
  with open(tmp_path / "two" / "manifest.json") as f:
    assert json.load(f) == one


def test_damaged_source_jpegs_that_decode_with_warnings_are_skipped_and_named(tmp_path):
  """libjpeg (OpenCV, TensorFlow) only warns about these and decodes them: bytes between
  two marker segments, restart markers out of order."""
  import cv2  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  src, dst = tmp_path / "mars", tmp_path / "out"
  paths = fakes.write_mars(str(src))
  between = paths["train"][2][1]
  data = fakes.read_bytes(str(src), between)
  scan = data.index(b"\xff\xda")
  fakes.write_file(os.path.join(src, *between.split("/")),
                   data[:scan] + b"\x12\x34" + data[scan:])
  restarts = paths["train"][2][3]
  image = cv2.imdecode(np.frombuffer(fakes.read_bytes(str(src), restarts), np.uint8),
                       cv2.IMREAD_COLOR)
  data = bytearray(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1])
  data[data.index(b"\xff\xd0") + 1] = 0xD3
  fakes.write_file(os.path.join(src, *restarts.split("/")), bytes(data))
  for rel in (between, restarts):  # what OpenCV makes of them: an image
    assert shards.decode_gray(fakes.read_bytes(str(src), rel)) is not None
  manifest = _convert(src, dst)
  reasons = {s["path"]: s["reason"] for s in manifest["skipped_frames"]}
  marker = bytes(data).index(b"\xff\xd3")
  assert reasons == {
      between: f"damaged JPEG file: byte {scan} should start a marker and is 0x12",
      restarts: f"damaged JPEG file: restart marker 3 at byte {marker} where 0 is due "
                "(damaged compressed data)"}
  rec = fakes.read_all(str(dst))[2]
  assert rec["frame_names"] == [paths["train"][2][0], paths["train"][2][2]]


@pytest.mark.parametrize("mode,options", [
    ("RGB", {"subsampling": 0}), ("RGB", {"subsampling": 1}), ("RGB", {"subsampling": 2}),
    ("RGB", {"progressive": True}), ("L", {}), ("CMYK", {})])
def test_strict_jpeg_gray_is_opencv_gray(mode, options):
  """The gray frame the flow is computed from: the same pixels as OpenCV's IMREAD_GRAYSCALE
  (4:4:4, 4:2:2, 4:2:0, progressive, gray and CMYK JPEGs of odd size)."""
  import io  # pylint: disable=import-outside-toplevel
  import cv2  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(5)
  rgb = cv2.resize((rng.random((5, 3, 3)) * 255).astype(np.uint8), (19, 37))
  buf = io.BytesIO()
  image = Image.fromarray(rgb)
  (image.convert(mode) if mode != "RGB" else image).save(buf, "JPEG", quality=80, **options)
  data = buf.getvalue()
  gray, warning = shards.decode_jpeg_gray_strict(data)
  assert warning is None
  want = cv2.imdecode(np.frombuffer(data, np.uint8),
                      cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
  assert gray.shape == want.shape == (37, 19) and gray.dtype == np.uint8
  np.testing.assert_array_equal(gray, want)


def _warned_bit_flip(data, capfd):
  """The first single-bit flip in the compressed data of JPEG `data` (seeded order) that
  leaves its structure intact (`image_check`), that OpenCV decodes to an image, and that
  OpenCV's libjpeg prints a "Corrupt JPEG data" warning about: (damaged bytes, warning)."""
  import cv2  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tfreid.data import image_check  # pylint: disable=import-outside-toplevel
  sos = data.index(b"\xff\xda")
  start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
  candidates = [(pos, bit) for pos in range(start, len(data) - 2) for bit in range(8)]
  order = np.random.default_rng(20261206).permutation(len(candidates))
  capfd.readouterr()
  for k in order[:400]:
    pos, bit = candidates[k]
    damaged = bytearray(data)
    damaged[pos] ^= 1 << bit
    damaged = bytes(damaged)
    if image_check.frame_problem(damaged, "jpeg") is not None:
      continue
    image = cv2.imdecode(np.frombuffer(damaged, np.uint8), cv2.IMREAD_COLOR)
    warnings = re.findall(r"Corrupt JPEG data: [^\n]*", capfd.readouterr().err)
    if image is not None and warnings:
      assert image.shape == (fakes.H, fakes.W, 3)
      return damaged, warnings[0].strip()
  raise AssertionError("no single-bit flip among 400 makes libjpeg warn")


def test_source_jpeg_libjpeg_warns_about_is_skipped_with_its_warning(tmp_path, capfd):
  """A bit flipped in the compressed data: the structure is intact and OpenCV decodes the
  frame (its libjpeg only prints a warning); the converter decodes JPEG strictly, skips
  the frame and gives libjpeg's warning as the reason."""
  src, dst = tmp_path / "mars", tmp_path / "out"
  paths = fakes.write_mars(str(src))
  victim = paths["train"][2][2]  # 3rd of the 4 frames of train row 3
  damaged, warning = _warned_bit_flip(fakes.read_bytes(str(src), victim), capfd)
  fakes.write_file(os.path.join(src, *victim.split("/")), damaged)
  assert shards.decode_gray(damaged) is not None  # what OpenCV makes of it: an image
  manifest = _convert(src, dst)
  assert manifest["skipped_frames"] == [{"path": victim, "reason": f"libjpeg: {warning}"}]
  assert manifest["dropped_tracklets"] == []
  assert manifest["num_frames"] == (sum(n for _, _, n in fakes.MARS_TRAIN + fakes.MARS_TEST)
                                    - 1)
  records = fakes.read_all(str(dst))
  assert len(records) == len(fakes.MARS_TRAIN) + len(fakes.MARS_TEST)
  rec = records[2]
  assert rec["frame_names"] == [p for p in paths["train"][2] if p != victim]
  assert rec["frames"] == [fakes.read_bytes(str(src), p) for p in rec["frame_names"]]
  for tid, other in records.items():  # every other frame is stored byte-for-byte
    if tid != 2:
      assert other["frames"] == [fakes.read_bytes(str(src), p) for p in other["frame_names"]]


def test_resume_reconverts_a_shard_written_before_strict_jpeg_decoding(tmp_path, capsys):
  """A finished shard whose state entry does not record the frame checks of this version
  (an older converter, which let through frames libjpeg warns about) is converted again;
  the others are kept."""
  src, dst = tmp_path / "mars", tmp_path / "out"
  fakes.write_mars(str(src))
  small = 6000 / 2**20
  manifest = _convert(src, dst, shard_size_mb=small)
  want = _digest(dst)
  state = shards.load_state(str(dst))
  old = manifest["shards"][1]["file"]
  assert state["shards"][old]["frame_checks"] == shards.FRAME_CHECKS
  del state["shards"][old]["frame_checks"]
  shards.save_state(str(dst), state)
  others = [n for n in want if n.endswith(".tfrecord") and n != old]
  assert others
  stamps = {n: os.stat(dst / n).st_mtime_ns for n in others}
  capsys.readouterr()
  _convert(src, dst, shard_size_mb=small)
  lines = [l for l in capsys.readouterr().err.splitlines() if "re-converting" in l]
  assert lines == [f"re-converting {old}: it was written before JPEG frames were decoded "
                   "strictly (a frame libjpeg warns about may be in it)"]
  assert _digest(dst) == want
  assert {n: os.stat(dst / n).st_mtime_ns for n in others} == stamps
  assert shards.load_state(str(dst))["shards"][old]["frame_checks"] == shards.FRAME_CHECKS


def test_missing_strict_jpeg_decoder_is_a_clear_error_before_any_output(tmp_path,
                                                                         monkeypatch):
  import sys  # pylint: disable=import-outside-toplevel
  src, dst = tmp_path / "mars", tmp_path / "out"
  fakes.write_mars(str(src))
  monkeypatch.setitem(sys.modules, "simplejpeg", None)  # `import simplejpeg` fails
  with pytest.raises(shards.ConversionError,
                     match=r"decodes JPEG frames strictly with simplejpeg, which does not "
                           r"import \(.+\)\. Install it: pip install simplejpeg==1\.9\.0"):
    _convert(src, dst)
  assert not os.path.exists(dst)


def _reframe(path, offset, payload):
  """Writes `payload` as the record at byte `offset` of a TFRecord file, with valid CRCs
  (its length must be the old one's)."""
  from tfreid.data import reader  # pylint: disable=import-outside-toplevel
  header = struct.pack("<Q", len(payload))
  record = (header + struct.pack("<I", reader.masked_crc32c(header)) + payload
            + struct.pack("<I", reader.masked_crc32c(payload)))
  with open(path, "r+b") as f:
    f.seek(offset)
    f.write(record)


@pytest.mark.parametrize("damage,reason", [
    ("byte", r"record 1 \(tracklet \d+\) at byte \d+: its data fails its checksum"),
    ("length", r"record 0 \(tracklet \d+\) at byte 0: its length fails its checksum"),
    ("frame", r"record 1 \(tracklet \d+\) at byte \d+: frame 0 is a damaged JPEG image "
              r"\(its compressed data ends without an end-of-image marker \(truncated\)\)"),
])
def test_resume_reconverts_a_finished_shard_damaged_in_place(tmp_path, capsys, damage,
                                                             reason):
  """Same size, one byte or one frame changed: the rerun says so in one line and writes
  the shard again, byte-identical to a clean conversion; the other shards are kept."""
  src = tmp_path / "mars"
  fakes.write_mars(str(src))
  small = 6000 / 2**20
  dst = tmp_path / "out"
  manifest = _convert(src, dst, shard_size_mb=small)
  want = _digest(dst)
  assert len(manifest["shards"]) >= 3
  shard = next(s for s in manifest["shards"] if s["num_records"] >= 2)
  victim = str(dst / shard["file"])
  offsets = [r[6] for r in shards.load_state(str(dst))["shards"][shard["file"]]["tracklets"]]
  if damage == "byte":
    data = bytearray(open(victim, "rb").read())
    data[(offsets[1] + len(data)) // 2] ^= 0x01
    open(victim, "wb").write(bytes(data))
  elif damage == "length":
    data = bytearray(open(victim, "rb").read())
    data[8] ^= 0x01  # the length's CRC
    open(victim, "wb").write(bytes(data))
  else:  # the end-of-image marker of a frame zeroed, the record's CRCs made valid again
    payload = bytearray(shards.read_record(victim, offsets[1]))
    first_frame = bytes(fakes.parse_record(bytes(payload))["frames"][0])
    at = bytes(payload).index(first_frame) + len(first_frame) - 2
    payload[at:at + 2] = b"\x00\x00"
    _reframe(victim, offsets[1], bytes(payload))
  assert os.path.getsize(victim) == shard["bytes"] and _digest(dst) != want
  others = [n for n in want if n.endswith(".tfrecord") and n != shard["file"]]
  stamps = {n: os.stat(dst / n).st_mtime_ns for n in others}
  capsys.readouterr()
  _convert(src, dst, shard_size_mb=small)
  lines = [l for l in capsys.readouterr().err.splitlines() if "re-converting" in l]
  assert len(lines) == 1 and re.fullmatch(rf"re-converting {shard['file']}: {reason}",
                                          lines[0]), lines
  assert _digest(dst) == want
  assert {n: os.stat(dst / n).st_mtime_ns for n in others} == stamps


def test_disk_full_ends_the_converter_with_code_4_and_the_rerun_resumes(tmp_path):
  """A real ENOSPC from the kernel: the state file's temporary name is /dev/full."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  src, dst = tmp_path / "mars", tmp_path / "out"
  fakes.write_mars(str(src))
  args = [sys.executable, "-m", "data_pipelines.convert", "--dataset=mars",
          f"--input_dir={src}", f"--output_dir={dst}", "--num_workers=1", "--noprogress",
          f"--shard_size_mb={6000 / 2**20}"]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  run = lambda: subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True,
                               timeout=240)
  assert run().returncode == 0
  want = _digest(dst)
  os.symlink("/dev/full", dst / (shards.STATE_NAME + ".tmp"))
  proc = run()
  assert proc.returncode == 4, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: no space left on the device ([Errno 28] No space left on "
                         "device") and last.endswith("run the same command to resume."), last
  os.remove(dst / (shards.STATE_NAME + ".tmp"))  # (read, /dev/full never ends)
  assert _digest(dst) == want  # shards, manifest and index as they were
  proc = run()
  assert proc.returncode == 0 and "resuming: " in proc.stderr and "re-converting" not in \
      proc.stderr, proc.stderr[-2000:]
  assert _digest(dst) == want
