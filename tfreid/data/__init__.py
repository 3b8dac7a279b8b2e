"""Data: the tracklet TFRecord schema (`schema`), the reader and clip pipelines.

Training batches (per replica) are dicts:
  clips     uint8   [B, T, H, W, 3]   (H, W = data.height, data.width; T = data.seq_len)
  labels    int32   [B]               training label 0..N-1 of the split
  pids      int32   [B]               original person id
  camids    int32   [B]               0-based camera id
  flow      float32 [B, T, H, W, 2]   only with data.use_flow (dequantised, in pixels)
  keypoints float32 [B, T, 14, 3]     only with data.use_keypoints (x, y in clip pixels,
                                      visibility; zeros where absent)
Test batches carry the same keys (labels = -1) plus `index` int32 [B]: the position of the
clip's tracklet in the partition's tracklet order.
"""
