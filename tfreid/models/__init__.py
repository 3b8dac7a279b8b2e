"""Models: one module per method, each a Keras subclassed model.

The method contract (what a method's module and model declare, and the defaults) is in
:mod:`tfreid.models.contract`; ``docs/adding_a_method.md`` walks through it file by file.
In short:
- a module ``tfreid/models/NAME.py`` (or a dotted module path in ``model.name``) exposes
  ``build(config: ExperimentConfig, num_classes: int) -> keras.Model``; `build_model`
  looks it up by ``config.model.name``, with no registration step;
- ``model(inputs, training=...)`` takes a dict of the streams the module declares
  (``streams(config)``, default ``("clips",)``: uint8 [B, T, H, W, 3]); float conversion
  and normalisation happen inside the model;
- it returns a dict of float outputs with ``"embedding"`` [B, D] (the retrieval feature),
  plus what its losses or visualisations need (``"logits"``, ``"attention*"`` maps ...).
"""

from tfreid.models.contract import input_streams  # noqa: F401


def build_model(config, num_classes: int):
  """Builds the model named by `config.model.name` for `num_classes` training identities."""
  from tfreid.models import contract  # pylint: disable=import-outside-toplevel
  return contract.method_module(config).build(config, num_classes)
