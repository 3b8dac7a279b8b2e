"""The model of the test-only method: `model.name=fake_method.probe`.

Per frame: RGB (scaled to [0, 1]) and flow are concatenated and go through a frozen 1x1
projection with BatchNorm, then a 3x3 convolution; a 1x1 convolution scores every cell and
a spatial softmax gives the attention map; the attended feature of the frame is the
attention-weighted sum of the cells. The keypoints' mean position (divided by the frame
size) is embedded per frame. A frame weight (sigmoid of a dense layer) weighs the frames:
the clip embedding is the weighted mean of the frame features, and the tracklet merge is
the weighted mean over all frames of all clips (sums of w * e and of w), not the mean of
clip embeddings. `parts` [B, 2, 3] is a small part feature; the learned distance is
|e_q - e_g| + softplus(alpha) * mean_r |p_q,r - p_g,r|.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from tfreid.config import ConfigError


@dataclasses.dataclass
class ProbeConfig:
  """model.probe: the method's own section."""
  channels: int = 4
  embedding_dim: int = 6
  activity_penalty: float = 1e-3

  def validate(self) -> None:
    if self.channels < 1 or self.embedding_dim < 1:
      raise ConfigError("model.probe.channels and embedding_dim must be >= 1.")


CONFIG_CLASS = ProbeConfig


def streams(config):
  del config
  return ("clips", "flow", "keypoints")


def validate_config(config) -> None:
  if config.data.seq_len < 1:
    raise ConfigError("fake_method.probe needs clips of at least one frame.")


class Probe(keras.Model):
  """The test-only method's model (module docstring)."""

  distance_inputs = ("embedding", "parts")

  def __init__(self, num_classes: int, channels: int = 4, embedding_dim: int = 6,
               activity_penalty: float = 1e-3, **kwargs):
    super().__init__(**kwargs)
    self.activity_penalty = activity_penalty
    self.frozen_proj = keras.Sequential(
        [keras.layers.Conv2D(channels, 1, name="conv"),
         keras.layers.BatchNormalization(name="bn")], name="frozen_proj")
    self.conv = keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                                    name="conv")
    self.score = keras.layers.Conv2D(1, 1, name="score")
    self.kp = keras.layers.Dense(channels, name="kp")
    self.frame_gate = keras.layers.Dense(1, name="frame_gate")
    self.embed = keras.layers.Dense(embedding_dim, name="embed")
    self.part = keras.layers.Dense(6, name="part")
    self.classifier = keras.layers.Dense(num_classes, name="classifier")
    self.alpha = self.add_weight(shape=(), initializer="zeros", name="alpha")

  def _frames(self, inputs):
    clips = tf.cast(inputs["clips"], tf.float32) / 255.0
    b, t = tf.shape(clips)[0], tf.shape(clips)[1]
    h, w = clips.shape[2], clips.shape[3]
    x = tf.concat([clips, tf.cast(inputs["flow"], tf.float32) / 4.0], -1)
    x = tf.reshape(x, [-1, h, w, 5])
    x = self.conv(self.frozen_proj(x))
    c = x.shape[-1]
    logits = tf.reshape(self.score(x), [-1, h * w])
    attention = tf.nn.softmax(logits, axis=-1)
    attended = tf.einsum("nk,nkc->nc", attention, tf.reshape(x, [-1, h * w, c]))
    kp = tf.cast(inputs["keypoints"], tf.float32)
    position = tf.reduce_mean(kp[..., :2], axis=2) / tf.constant([float(w), float(h)])
    frame = tf.reshape(attended, [b, t, c]) + self.kp(position)
    return frame, tf.reshape(attention, [b, t, h, w])

  def call(self, inputs, training=None):
    frame, attention = self._frames(inputs)           # [B, T, C], [B, T, h, w]
    embedded = self.embed(frame)                       # [B, T, D]
    weight = tf.sigmoid(self.frame_gate(frame))[..., 0]  # [B, T]
    embedding = (tf.reduce_sum(weight[..., None] * embedded, 1)
                 / tf.reduce_sum(weight, 1, keepdims=True))
    parts = tf.reshape(self.part(tf.reduce_mean(frame, 1)), [-1, 2, 3])
    self.add_loss(self.activity_penalty * tf.reduce_mean(tf.square(embedding)))
    return {"embedding": embedding, "parts": parts, "logits": self.classifier(embedding),
            "attention": attention, "frame_embedding": embedded, "frame_weight": weight}

  # -------------------------------------------------------------- method contract

  def tracklet_statistics(self, outputs):
    w = outputs["frame_weight"]
    return {"weighted": tf.reduce_sum(w[..., None] * outputs["frame_embedding"], 1),
            "weight": tf.reduce_sum(w, 1, keepdims=True), "parts": outputs["parts"]}

  def finish_tracklet(self, sums, count):
    return {"embedding": sums["weighted"] / sums["weight"],
            "parts": sums["parts"] / count[:, None, None]}

  def part_distance(self, a, b):
    diff = tf.abs(a["parts"][:, None] - b["parts"][None])   # [A, B, 2, 3]
    return tf.reduce_mean(tf.reduce_sum(diff, -1), -1)

  def pairwise_distance(self, query, gallery):
    q = tf.cast(query["embedding"], tf.float32)
    g = tf.cast(gallery["embedding"], tf.float32)
    global_part = tf.reduce_sum(tf.abs(q[:, None] - g[None]), -1)
    return global_part + tf.nn.softplus(self.alpha) * self.part_distance(query, gallery)

  def distance_functions(self):
    return {"parts": self.part_distance, "learned": self.pairwise_distance}

  def summary_scalars(self, outputs, batch):
    del batch
    return {"attention_peak": tf.reduce_max(outputs["attention"], axis=[2, 3])}


def build(config, num_classes: int) -> Probe:
  section = config.model.probe
  return Probe(num_classes, channels=section.channels, embedding_dim=section.embedding_dim,
               activity_penalty=section.activity_penalty, name="probe")
