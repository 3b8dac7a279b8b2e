"""Markdown table, CMC plot, rank-list image and PNG writing of the evaluation report."""

import numpy as np
import pytest
from PIL import Image

from tfreid.metrics import report


def test_markdown_table(tmp_path):
  path = tmp_path / "eval" / "results.md"
  rows = [{"model": "temporal_pooling", "rank1": 0.81234, "mAP": 0.7},
          {"model": "a|b", "rank1": 0.5, "note": "rerank"}]
  text = report.write_markdown_table(str(path), rows, "MARS")
  assert path.read_text() == text
  assert text.splitlines() == [
      "# MARS",
      "",
      "| model | rank1 | mAP | note |",
      "| --- | --- | --- | --- |",
      "| temporal_pooling | 0.8123 | 0.7000 |  |",
      "| a\\|b | 0.5000 |  | rerank |",
  ]
  with pytest.raises(ValueError, match="rows is empty"):
    report.write_markdown_table(str(path), [], "x")


def test_plot_cmc_writes_a_png(tmp_path):
  path = tmp_path / "cmc.png"
  curves = {"a": np.linspace(0.5, 1.0, 50), "b": np.linspace(0.2, 0.9, 20)}
  assert report.plot_cmc(str(path), curves) == str(path)
  with Image.open(path) as image:
    assert image.format == "PNG" and image.size == (600, 450)
    pixels = np.asarray(image.convert("RGB"))
  assert pixels.std() > 0  # something was drawn
  with pytest.raises(ValueError, match="curves is empty"):
    report.plot_cmc(str(path), {})
  with pytest.raises(ValueError, match="CMC curve 'x' must be a non-empty finite 1-D array"):
    report.plot_cmc(str(path), {"x": [0.1, np.nan]})


def _tracklet(num_frames, height, width, start):
  frames = np.zeros((num_frames, height, width, 3), np.uint8)
  for i in range(num_frames):
    frames[i] = (start + 10 * i) % 256
  return frames


def test_render_rank_list_layout_and_borders():
  query = _tracklet(3, 8, 6, 40)
  gallery = [_tracklet(5, 8, 6, 100), _tracklet(1, 16, 12, 200)]
  border, gap, text_height, num_frames = 2, 3, 14, 2
  image = report.render_rank_list(query, gallery, [True, False], [0.5, 1.25],
                                  num_frames=num_frames, border=border, gap=gap,
                                  text_height=text_height)
  column_w, column_h = 6 + 2 * border, num_frames * 8 + 2 * border
  assert image.dtype == np.uint8
  assert image.shape == (text_height + column_h, 3 * (column_w + gap) + 2 * gap, 3)
  lefts = [gap, gap + column_w + 2 * gap, gap + 2 * column_w + 3 * gap]
  top = text_height
  for left, color in zip(lefts, [report.QUERY_COLOR, report.CORRECT_COLOR, report.WRONG_COLOR]):
    assert tuple(image[top, left]) == color                              # top-left corner
    assert tuple(image[top + column_h - 1, left + column_w - 1]) == color  # bottom-right
  # Query frames 0 and 2 (evenly spread), top to bottom.

  def inner(left, row):
    return image[top + border + 8 * row:top + border + 8 * (row + 1),
                 left + border:left + border + 6]

  np.testing.assert_array_equal(inner(lefts[0], 0), query[0])
  np.testing.assert_array_equal(inner(lefts[0], 1), query[2])
  np.testing.assert_array_equal(inner(lefts[1], 0), gallery[0][0])
  np.testing.assert_array_equal(inner(lefts[1], 1), gallery[0][4])
  # A one-frame tracklet, resized from 16x12 (uniform colour survives), then background.
  np.testing.assert_array_equal(inner(lefts[2], 0), np.full((8, 6, 3), 200, np.uint8))
  np.testing.assert_array_equal(inner(lefts[2], 1), np.full((8, 6, 3), 255, np.uint8))
  assert (image[:text_height] != 255).any()  # labels were written


def test_render_rank_list_rejects_bad_input():
  query = _tracklet(2, 8, 6, 0)
  with pytest.raises(ValueError, match="same length"):
    report.render_rank_list(query, [query], [True, False], [0.1])
  with pytest.raises(ValueError, match=r"query_frames must be uint8 \[num_frames >= 1, H, W, 3\]"):
    report.render_rank_list(query.astype(np.float32), [query], [True], [0.1])
  with pytest.raises(ValueError, match=r"gallery\[0\] must be uint8"):
    report.render_rank_list(query, [query[0]], [True], [0.1])


def test_save_png_round_trip(tmp_path):
  image = np.random.default_rng(0).integers(0, 256, (9, 7, 3)).astype(np.uint8)
  path = tmp_path / "sub" / "rank.png"
  report.save_png(str(path), image)
  with Image.open(path) as saved:
    np.testing.assert_array_equal(np.asarray(saved), image)
  with pytest.raises(ValueError, match="image must be uint8"):
    report.save_png(str(path), image.astype(np.float32))


def _split_record(split, rank1, map_value, step):
  """A metrics.json record of one split: CMC rank1 at rank 1, 0.9 from rank 2 to 4, then 1."""
  cmc = [rank1] + [0.9] * 3 + [1.0] * 16
  return {"split": split, "rank1": rank1, "rank5": 1.0, "rank10": 1.0, "rank20": 1.0,
          "mAP": map_value, "cmc": cmc, "num_gallery": 150, "checkpoint_step": step,
          "num_valid_queries": 150}


def test_split_table_mean_and_sample_std(tmp_path):
  # Imported here: the evaluation module pulls in TensorFlow, the tests above do not need it.
  from tfreid.training import evaluation  # pylint: disable=import-outside-toplevel
  records = [_split_record(0, 0.5, 0.4, 100), _split_record(3, 0.7, 0.5, 120)]
  aggregate = evaluation.aggregate_records(records)
  # Means 0.6 / 0.45; sample std sqrt(2 * 0.1^2 / 1) = 0.1414 and sqrt(2 * 0.05^2) = 0.0707.
  assert aggregate["rank1"] == pytest.approx(0.6)
  assert aggregate["rank1_std"] == pytest.approx(0.02 ** 0.5)
  assert aggregate["mAP_std"] == pytest.approx(0.005 ** 0.5)
  assert aggregate["rank5_std"] == 0.0
  assert aggregate["splits"] == [0, 3] and aggregate["num_splits"] == 2
  assert aggregate["cmc"][:2] == pytest.approx([0.6, 0.9])
  evaluation.write_aggregate_reports(str(tmp_path), aggregate, "Title", "About.",
                                     json_name="s.json", md_name="s.md", cmc_name="s.png")
  assert (tmp_path / "s.md").read_text(encoding="utf-8").splitlines() == [
      "# Title", "", "About.", "",
      "| split | rank-1 | rank-5 | rank-10 | rank-20 | mAP | step |",
      "| --- | --- | --- | --- | --- | --- | --- |",
      "| 0 | 50.0 | 100.0 | 100.0 | 100.0 | 40.0 | 100 |",
      "| 3 | 70.0 | 100.0 | 100.0 | 100.0 | 50.0 | 120 |",
      "| mean ± std (2 splits) | 60.0 ± 14.1 | 100.0 ± 0.0 | 100.0 ± 0.0 | 100.0 ± 0.0 | "
      "45.0 ± 7.1 |  |"]
  with Image.open(tmp_path / "s.png") as image:
    assert image.format == "PNG"
  single = evaluation.aggregate_records(records[:1])
  assert single["rank1"] == 0.5 and single["rank1_std"] is None
  assert single["std"] == "undefined for a single split"
  with pytest.raises(ValueError, match="no per-split records"):
    evaluation.aggregate_records([])
