"""a3d's recurrent 3-D attention agent: bin pooling, the location mapping, the Gaussian
location policy and the recurrent agent (Chen et al., "Learning Recurrent 3D Attention for
Video-Based Person Re-identification", section III-B/C, eqs. 2-5, 9, 13, table IV, fig. 3).

The agent looks T times ("glimpses") at the spatio-temporal feature volume g [B, L, H, W, C]:
glimpse t average-pools the fixed-size bin L_a x H_a x W_a whose corner the previous action
a_{t-1} chose (eq. 3), an Elman RNN updates its state h_t (eq. 4), and a Gaussian policy of
mean F_a(h_t) and fixed variance Sigma proposes a_t (eq. 5). The local features are
h_1..h_T (eq. 2).

Library choices where the paper is silent (design note, "ambiguities"):

* Actions are continuous in [-1, 1]^3 and map to corner indices by
  ``index = clip(floor((a + 1) / 2 * (G - A) + 1/2), 0, G - A)`` per axis
  (:func:`location_to_index`): a = 0 is the centre corner, which is the paper's a_0
  ("we uniformly initialise the first glimpse as the center of the video clip"); rounding is
  half up (``tf.round`` would round half to even). Sigma = 0.03 is read as a variance in
  these units (std 0.173, about one cell of a 16-cell axis): as a standard deviation there
  would be almost no exploration.
* The mean is ``tanh(fc_att(h_t))`` (no parameter added to table IV's fc_att) so that it
  stays inside the action range.
* ReLU after the FCs of F_o and F_h, as in the recurrent attention model of Mnih et al.
  that the agent follows: ``o_t = relu(fc2_feat(relu(fc1_feat(x))) +
  fc2_att(relu(fc1_att(loc))))``, ``h_t = relu(fc_i2h(o_t) + fc_h2h(h_{t-1}))``. F_o sees the
  quantised location of the bin it pooled (in [-1, 1]), not the raw sample.
* How far the policy gradient reaches (``policy_gradient_scope``). Eq. 9 names its
  parameters: "theta indicates the parameters of our agent", and alg. 1 (lines 13-15) updates
  F_o, F_h, F_a with it; the representation network (F_img, F_flow, F_g) is trained by the
  supervised losses (eqs. 14-15), which reach it through f_g and through the agent's h_t.
  ``agent`` (default) gives exactly that: log pi(a_t | s_t) is computed on a second pass of
  the recurrence over the stopped bin features sg(g_bin) (the same forward values, so the
  same actions), so the REINFORCE gradient trains fc1_feat, fc2_feat, fc1_att, fc2_att,
  fc_i2h, fc_h2h and fc_att and never reaches g. ``all`` lets it flow on into g and the
  backbones (RAM-style end-to-end); ``location_head`` keeps it to fc_att.
* The value baseline of eq. 13 ("a value network", architecture not given) is one FC on the
  stopped state, ``b_t = fc_v(sg(h_t))``, so its regression loss trains fc_v only.
* The agent computes in float32 whatever the global dtype policy: the policy's
  log-probabilities and samples are float32 under mixed precision.
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

LOCATION_POLICIES = ("gaussian", "uniform")
GRADIENT_SCOPES = ("agent", "all", "location_head")


def bin_pooling(features, bin_size) -> tf.Tensor:
  """Eq. 3's observation of every bin: the mean of g over each L_a x H_a x W_a window.

  Args:
    features: g, [B, L, H, W, C].
    bin_size: (L_a, H_a, W_a), each no larger than the matching axis of g.

  Returns:
    float32 [B, L - L_a + 1, H - H_a + 1, W - W_a + 1, C]: entry (l, h, w) is the mean of
    g[:, l:l+L_a, h:h+H_a, w:w+W_a] (stride 1, no padding: one entry per action of the
    pool of size (L_g - L_a + 1)(H_g - H_a + 1)(W_g - W_a + 1)).
  """
  check_bin_size(features.shape[1:4], bin_size)
  x = tf.cast(features, tf.float32)
  return tf.nn.avg_pool3d(x, ksize=list(bin_size), strides=[1, 1, 1], padding="VALID")


def check_bin_size(grid, bin_size) -> None:
  """Raises ValueError unless the bin fits inside the feature volume."""
  grid = tuple(grid)
  bin_size = tuple(bin_size)
  if len(bin_size) != 3 or any(b < 1 for b in bin_size):
    raise ValueError(f"a3d bin_size must be 3 positive sizes (L_a, H_a, W_a), got "
                     f"{list(bin_size)}.")
  if any(g is not None and b > g for b, g in zip(bin_size, grid)):
    raise ValueError(f"a3d bin {list(bin_size)} (L_a, H_a, W_a) does not fit in the feature "
                     f"volume {list(grid)} (L_g, H_g, W_g); lower model.a3d.bin_size or use "
                     "longer clips / larger frames.")


def gather_bins(pooled, index) -> tf.Tensor:
  """Eq. 3: the pooled bin at corner `index` (int32 [B, 3]) of `pooled` [B, l, h, w, C]."""
  return tf.gather_nd(pooled, index, batch_dims=1)


def location_to_index(location, grid, bin_size) -> tf.Tensor:
  """Actions in [-1, 1]^3 -> corner indices (l, h, w), int32 [..., 3] (module docstring).

  index_k = clip(floor((a_k + 1) / 2 * (G_k - A_k) + 1/2), 0, G_k - A_k).
  """
  span = tf.constant([g - a for g, a in zip(grid, bin_size)], tf.float32)
  raw = tf.floor((tf.cast(location, tf.float32) + 1.0) / 2.0 * span + 0.5)
  return tf.cast(tf.clip_by_value(raw, 0.0, span), tf.int32)


def index_to_location(index, grid, bin_size) -> tf.Tensor:
  """Corner indices -> their location in [-1, 1] (0 on an axis where the bin fills it)."""
  span = tf.constant([g - a for g, a in zip(grid, bin_size)], tf.float32)
  safe = tf.maximum(span, 1.0)
  return tf.where(span > 0, 2.0 * tf.cast(index, tf.float32) / safe - 1.0, 0.0)


def gaussian_policy(mean, variance: float) -> tfd.Distribution:
  """Eq. 5: pi(a | s_t) = N(a; mu_t, Sigma I_3), a distribution over [..., 3] in float32."""
  mean = tf.cast(mean, tf.float32)
  scale = tf.sqrt(tf.constant(variance, tf.float32))
  return tfd.Independent(tfd.Normal(loc=mean, scale=scale), reinterpreted_batch_ndims=1)


def sample_global(mean, variance: float, seed, replica_id, num_replicas) -> tf.Tensor:
  """Samples eq. 5's policy for a replica's batch as part of the global batch.

  The replica's means [B, 3] are placed at rows replica_id * B .. (replica_id + 1) * B of a
  [num_replicas * B, 3] mean (zeros elsewhere) and the policy is sampled there with the
  stateless `seed`; the replica keeps its rows. The noise of a row depends on the seed and the
  row only, so the sample of a global batch position is the same whether the batch runs on
  one replica or is split over several (library choice: reproducible distributed training).
  """
  mean = tf.cast(mean, tf.float32)
  b = tf.shape(mean)[0]
  start = tf.cast(replica_id, tf.int32) * b
  total = tf.cast(num_replicas, tf.int32) * b
  padded = tf.pad(mean, [[start, total - start - b], [0, 0]])
  sample = gaussian_policy(padded, variance).sample(seed=seed)
  return sample[start:start + b]


def uniform_global(shape_b, seed, replica_id, num_replicas) -> tf.Tensor:
  """Uniform actions in [-1, 1]^3 for a replica's rows of the global batch ("random
  attention", table VII), drawn like :func:`sample_global`."""
  start = tf.cast(replica_id, tf.int32) * shape_b
  total = tf.cast(num_replicas, tf.int32) * shape_b
  draws = tf.random.stateless_uniform(tf.stack([total, 3]), seed, minval=-1.0, maxval=1.0)
  return draws[start:start + shape_b]


def replica_position():
  """(replica id, replicas in sync) of the current replica context, (0, 1) outside one."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or not tf.distribute.has_strategy():
    return tf.constant(0, tf.int32), 1
  rid = ctx.replica_id_in_sync_group
  return tf.cast(rid, tf.int32), ctx.num_replicas_in_sync


@keras.saving.register_keras_serializable(package="tfreid")
class RecurrentBinAttention(keras.layers.Layer):
  """The agent of fig. 3 / table IV: F_o (eq. 3), F_h (eq. 4), F_a (eq. 5), value head.

  ``layer(g, training, seed)`` with g [B, L_g, H_g, W_g, C] returns a dict of float32:

    local      [B, T, hidden]  f_l^1..f_l^T = h_1..h_T (eq. 2)
    log_prob   [B, T]          log pi(a_t | s_t) of the sampled actions a_1..a_T (eq. 9),
                               gradient through the mean only (the action is stopped);
                               0 at inference and under the uniform policy
    value      [B, T]          b_t = fc_v(sg(h_t)) (eq. 13's baseline)
    mean       [B, T, 3]       mu_t
    actions    [B, T, 3]       a_t (the sample in training, mu_t at inference)
    index      [B, T, 3]       int32 corners of the bins glimpses 1..T pooled
                               (glimpse 1: the centre a_0; glimpse t: a_{t-1})

  Args:
    bin_size: (L_a, H_a, W_a) (table IV: 4 x 6 x 3).
    num_glimpses: T (table IV: 4).
    hidden_dim: width of o_t and h_t (table IV: 256).
    feature_dim: width of fc1_feat / fc1_att (table IV: 128).
    variance: Sigma of eq. 5 (paper: 0.03).
    location_policy: "gaussian" (eq. 5) or "uniform" (table VII "random attention": bins
      drawn uniformly at train and test).
    policy_gradient_scope: "agent" (eq. 9's theta: the RL gradient trains F_o, F_h and F_a
      and stops at g), "all" (it flows on into g and the backbones) or "location_head"
      (F_a sees sg(h_t): RL trains fc_att only). Module docstring.
  """

  def __init__(self, bin_size=(4, 6, 3), num_glimpses: int = 4, hidden_dim: int = 256,
               feature_dim: int = 128, variance: float = 0.03,
               location_policy: str = "gaussian", policy_gradient_scope: str = "agent",
               **kwargs):
    kwargs["dtype"] = "float32"
    super().__init__(**kwargs)
    if num_glimpses < 1:
      raise ValueError(f"a3d num_glimpses must be >= 1, got {num_glimpses}.")
    if variance <= 0:
      raise ValueError(f"a3d policy variance must be > 0, got {variance}.")
    if location_policy not in LOCATION_POLICIES:
      raise ValueError(f"a3d location_policy={location_policy!r}; expected one of "
                       f"{LOCATION_POLICIES}.")
    if policy_gradient_scope not in GRADIENT_SCOPES:
      raise ValueError(f"a3d policy_gradient_scope={policy_gradient_scope!r}; expected one "
                       f"of {GRADIENT_SCOPES}.")
    self.bin_size = tuple(int(b) for b in bin_size)
    self.num_glimpses = int(num_glimpses)
    self.hidden_dim = int(hidden_dim)
    self.feature_dim = int(feature_dim)
    self.variance = float(variance)
    self.location_policy = location_policy
    self.policy_gradient_scope = policy_gradient_scope
    dense = lambda units, name, bias=True: keras.layers.Dense(
        units, use_bias=bias, dtype="float32", name=name)
    self.fc1_feat = dense(feature_dim, "fc1_feat")
    self.fc2_feat = dense(hidden_dim, "fc2_feat")
    self.fc1_att = dense(feature_dim, "fc1_att")
    self.fc2_att = dense(hidden_dim, "fc2_att")
    self.fc_i2h = dense(hidden_dim, "fc_i2h")
    self.fc_h2h = dense(hidden_dim, "fc_h2h", bias=False)
    self.fc_att = dense(3, "fc_att")
    self.fc_v = dense(1, "fc_v")

  def build(self, input_shape):
    channels = input_shape[-1]
    check_bin_size(input_shape[1:4], self.bin_size)
    self.fc1_feat.build((None, channels))
    self.fc2_feat.build((None, self.feature_dim))
    self.fc1_att.build((None, 3))
    self.fc2_att.build((None, self.feature_dim))
    self.fc_i2h.build((None, self.hidden_dim))
    self.fc_h2h.build((None, self.hidden_dim))
    self.fc_att.build((None, self.hidden_dim))
    self.fc_v.build((None, self.hidden_dim))
    self.built = True

  # ------------------------------------------------------------------ equations

  def observe(self, bin_feature, location):
    """Eq. 3 (F_o): o_t from the pooled bin [B, C] and its location in [-1, 1] [B, 3]."""
    what = self.fc2_feat(tf.nn.relu(self.fc1_feat(bin_feature)))
    where = self.fc2_att(tf.nn.relu(self.fc1_att(tf.stop_gradient(location))))
    return tf.nn.relu(what + where)

  def transition(self, observation, hidden):
    """Eq. 4 (F_h): h_t = relu(fc_i2h(o_t) + fc_h2h(h_{t-1})), a vanilla (Elman) RNN."""
    return tf.nn.relu(self.fc_i2h(observation) + self.fc_h2h(hidden))

  def location_mean(self, hidden):
    """Eq. 5's mean mu_t = tanh(fc_att(h_t)) (sg(h_t) with scope location_head; the caller
    passes the state of the stopped-feature pass with scope agent)."""
    if self.policy_gradient_scope == "location_head":
      hidden = tf.stop_gradient(hidden)
    return tf.tanh(self.fc_att(hidden))

  def baseline(self, hidden):
    """Eq. 13's baseline b_t = fc_v(sg(h_t)) [B]."""
    return self.fc_v(tf.stop_gradient(hidden))[:, 0]

  # ------------------------------------------------------------------ call

  def call(self, features, training=None, seed=None):
    grid = tuple(int(d) for d in features.shape[1:4])
    pooled = bin_pooling(features, self.bin_size)
    b = tf.shape(features)[0]
    replica_id, num_replicas = replica_position()
    index = location_to_index(tf.zeros([b, 3]), grid, self.bin_size)   # a_0: the centre
    hidden = tf.zeros([b, self.hidden_dim], tf.float32)
    # Scope "agent": the policy's own pass of the recurrence over sg(bin features); its
    # states equal `hidden` in value, so its mean is the same number with a gradient that
    # reaches the agent's layers but not g.
    policy_hidden = hidden
    out = {k: [] for k in ("local", "log_prob", "value", "mean", "actions", "index")}
    for t in range(self.num_glimpses):
      location = index_to_location(index, grid, self.bin_size)
      bins = gather_bins(pooled, index)
      hidden = self.transition(self.observe(bins, location), hidden)
      if self.policy_gradient_scope == "agent":
        policy_hidden = self.transition(
            self.observe(tf.stop_gradient(bins), location), policy_hidden)
        mean = self.location_mean(policy_hidden)
      else:
        mean = self.location_mean(hidden)
      step_seed = None if seed is None else tf.random.experimental.stateless_fold_in(seed, t)
      if self.location_policy == "uniform":
        if step_seed is None:
          raise ValueError("the uniform location policy needs a seed.")
        action = uniform_global(b, step_seed, replica_id, num_replicas)
        log_prob = tf.zeros([b], tf.float32)
      elif training:
        if step_seed is None:
          raise ValueError("sampling the location policy in training needs a seed.")
        action = tf.stop_gradient(sample_global(mean, self.variance, step_seed, replica_id,
                                                num_replicas))
        log_prob = gaussian_policy(mean, self.variance).log_prob(action)
      else:
        action = mean
        log_prob = tf.zeros([b], tf.float32)
      out["local"].append(hidden)
      out["log_prob"].append(log_prob)
      out["value"].append(self.baseline(hidden))
      out["mean"].append(mean)
      out["actions"].append(action)
      out["index"].append(index)
      index = location_to_index(action, grid, self.bin_size)
    return {k: tf.stack(v, axis=1) for k, v in out.items()}

  def get_config(self):
    config = super().get_config()
    config.update({"bin_size": list(self.bin_size), "num_glimpses": self.num_glimpses,
                   "hidden_dim": self.hidden_dim, "feature_dim": self.feature_dim,
                   "variance": self.variance, "location_policy": self.location_policy,
                   "policy_gradient_scope": self.policy_gradient_scope})
    return config
