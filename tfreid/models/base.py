"""What the clip models share: argument bookkeeping for ``get_config`` and the head's keys.

Each model stores its constructor arguments as attributes and lists their names in
``CONFIG_KEYS``; :meth:`ConfigKeysMixin.get_config` returns them (tuples as lists, so the
config is plain JSON/YAML), which is what Keras needs to rebuild the model from its config.
"""

from __future__ import annotations


class ConfigKeysMixin:
  """``get_config`` from the attributes named in ``CONFIG_KEYS`` (mixed into keras.Model)."""

  CONFIG_KEYS: tuple = ()

  def get_config(self):
    config = super().get_config()  # pylint: disable=no-member
    for key in self.CONFIG_KEYS:
      value = getattr(self, key)
      config[key] = list(value) if isinstance(value, tuple) else value
    return config


def head_kwargs(head_config) -> dict:
  """:class:`tfreid.models.heads.BottleneckHead` arguments (but num_classes) of model.head."""
  return {"embedding_dim": head_config.embedding_dim,
          "leaky_relu_alpha": head_config.leaky_relu_alpha, "dropout": head_config.dropout}
