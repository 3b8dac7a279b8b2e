"""Experiments: one module per method, each exposing `VARIANTS` and `get_config(variant)`.

`python -m tfreid.train --experiment=NAME[:VARIANT]` looks the module up by name.
"""
