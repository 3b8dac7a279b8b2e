"""The shared ReID head: global average pooling, bottleneck, identity classifier.

nonlocal_i3d section 3 (fig. 3(b)) and section 4.2: "average pooling followed by a bottleneck
block ... Bottleneck consists of fully connected layer, batch norm, leaky ReLU with
alpha = 0.1 and dropout with 0.5 drop ratio", then "a fully-connected layer ... to learn the
identity features" supervised by the softmax cross-entropy (eq. 9).
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfreid")
class BottleneckHead(keras.layers.Layer):
  """Average pooling -> FC -> BN -> LeakyReLU -> dropout -> classifier.

  The input is a feature map [B, ..., C] (e.g. [B, T, H, W, C]); it is averaged over every
  axis but the first and the last ("features", [B, C]). Then

    embedding = LeakyReLU_alpha(BN(W_fc features))       [B, embedding_dim]
    logits    = W_cls dropout(embedding) + b_cls          [B, num_classes]

  The retrieval embedding is the bottleneck output after BN and LeakyReLU and *before*
  dropout: section 3.1 of the paper uses "the layer outputs before final classification
  layer" as the track representation, and at test time dropout is the identity, so this is
  exactly that tensor, and in training the triplet loss (``losses.triplet.feature =
  "embedding"``) sees the same deterministic feature that retrieval uses while dropout only
  regularises the classifier. The FC has no bias (BN follows it).

  Initialisation: FC He-normal; classifier weights N(0, 0.001^2) and zero bias (small logits
  at the start, the common choice of ReID heads); BN momentum 0.9 (PyTorch's 0.1).

  All outputs are float32 (the pooling is done in float32; the FC and classifier run in the
  compute dtype, bfloat16 under ``mixed_bfloat16``).

  Args:
    num_classes: training identities.
    embedding_dim: bottleneck width. The paper does not give it; 512 in the nonlocal_i3d
      experiments is a library choice.
    leaky_relu_alpha: negative slope (paper: 0.1).
    dropout: drop rate before the classifier (paper: 0.5).

  Returns:
    dict: ``features`` [B, C], ``embedding`` [B, embedding_dim], ``logits`` [B, num_classes].
  """

  def __init__(self, num_classes: int, embedding_dim: int = 512, leaky_relu_alpha: float = 0.1,
               dropout: float = 0.5, **kwargs):
    super().__init__(**kwargs)
    if num_classes < 1 or embedding_dim < 1:
      raise ValueError(f"BottleneckHead needs num_classes >= 1 and embedding_dim >= 1, got "
                       f"{num_classes} and {embedding_dim}.")
    self.num_classes = num_classes
    self.embedding_dim = embedding_dim
    self.leaky_relu_alpha = leaky_relu_alpha
    self.dropout = dropout
    policy = self.dtype_policy
    self.fc = keras.layers.Dense(embedding_dim, use_bias=False, kernel_initializer="he_normal",
                                 dtype=policy, name="bottleneck_fc")
    self.bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype=policy,
                                              name="bottleneck_bn")
    self.activation = keras.layers.LeakyReLU(negative_slope=leaky_relu_alpha, dtype=policy,
                                             name="bottleneck_leaky_relu")
    self.drop = keras.layers.Dropout(dropout, dtype=policy, name="bottleneck_dropout")
    self.classifier = keras.layers.Dense(
        num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
        dtype=policy, name="classifier")

  def build(self, input_shape):
    channels = input_shape[-1]
    if channels is None:
      raise ValueError(f"BottleneckHead needs a known channel axis, got shape {input_shape}.")
    self.fc.build((None, channels))
    self.bn.build((None, self.embedding_dim))
    self.classifier.build((None, self.embedding_dim))
    self.built = True

  def call(self, feature_map, training=None):
    features = ops.cast(feature_map, "float32")
    if len(features.shape) > 2:
      features = ops.mean(features, axis=tuple(range(1, len(features.shape) - 1)))
    x = self.bn(self.fc(features), training=training)
    embedding = self.activation(x)
    logits = self.classifier(self.drop(embedding, training=training))
    return {"features": features, "embedding": ops.cast(embedding, "float32"),
            "logits": ops.cast(logits, "float32")}

  def get_config(self):
    config = super().get_config()
    config.update({"num_classes": self.num_classes, "embedding_dim": self.embedding_dim,
                   "leaky_relu_alpha": self.leaky_relu_alpha, "dropout": self.dropout})
    return config
