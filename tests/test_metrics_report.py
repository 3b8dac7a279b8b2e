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
