"""Distribution strategy from `runtime.strategy`.

- `mirrored` (default): MirroredStrategy over every local GPU; on a machine without GPUs, one
  CPU device. Tests pass their own strategy over two logical CPU devices.
- `multi_worker`: MultiWorkerMirroredStrategy configured from the `TF_CONFIG` environment
  variable (one process per machine, see README "Multi-GPU and multi-worker").
- `default`: TensorFlow's default (no-op) strategy.
"""

import json
import os

import tensorflow as tf


def create_strategy(runtime_config) -> tf.distribute.Strategy:
  name = runtime_config.strategy
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise ValueError(
          "runtime.strategy=multi_worker reads the cluster from the TF_CONFIG environment "
          "variable, which is not set. Example for worker 0 of two: TF_CONFIG='{\"cluster\": "
          "{\"worker\": [\"host0:12345\", \"host1:12345\"]}, \"task\": {\"type\": \"worker\", "
          "\"index\": 0}}'.")
    try:
      json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as e:
      raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from e
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "default":
    return tf.distribute.get_strategy()
  gpus = tf.config.list_logical_devices("GPU")
  if gpus:
    return tf.distribute.MirroredStrategy([d.name for d in gpus])
  cpu = tf.config.list_logical_devices("CPU")[0].name
  return tf.distribute.MirroredStrategy([cpu])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the worker that writes checkpoints, summaries, configs and reports: the "chief"
  task when TF_CONFIG's cluster has one, otherwise worker 0."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = bool(resolver.cluster_spec().as_dict().get("chief"))
  return resolver.task_type == "worker" and int(resolver.task_id or 0) == 0 and not has_chief


def task_name(strategy: tf.distribute.Strategy) -> str:
  """This process's task in the cluster, e.g. "worker_1" ("chief_0" without a cluster)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return "chief_0"
  return f"{resolver.task_type}_{int(resolver.task_id or 0)}"


def num_workers(strategy: tf.distribute.Strategy) -> int:
  """Number of worker processes taking part in training (1 without a cluster)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return 1
  spec = resolver.cluster_spec().as_dict()
  return sum(len(spec.get(job, [])) for job in ("chief", "worker"))
