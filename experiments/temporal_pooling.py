"""temporal_pooling: the baseline of all five papers. A 2-D ResNet-50 applied to every frame,
features averaged over time (nonlocal_i3d table 2 "Baseline"; fig. 1A).

Command:

    python -m tfreid.train --experiment=temporal_pooling --data_dir=DATA/mars --model_dir=runs/tp

Configuration: nonlocal_i3d's training recipe (section 4.2: 8-frame 256x128 clips, PK 32x4,
cross-entropy with label smoothing + batch-hard triplet, Adam 3e-4, weight decay 5e-4) on a
2-D ResNet-50 initialised from ImageNet.

Paper's reported results (nonlocal_i3d table 2, "Baseline", MARS): rank-1 77.9, rank-5 90.0,
rank-10 92.5, mAP 69.0.

Variants:
  ""          the baseline on MARS.
  synthetic   the same narrow sizes as nonlocal_i3d:synthetic, for side-by-side comparison
              on the built-in synthetic dataset.
"""

from experiments import nonlocal_i3d
from tfreid import config as cfg

VARIANTS = ("", "synthetic")


def get_config(variant: str = "") -> cfg.ExperimentConfig:
  c = nonlocal_i3d.paper_config()
  c.model.name = "temporal_pooling"
  c.model.backbone.name = "resnet2d"
  c.model.backbone.nonlocal_blocks.blocks_per_stage = [0, 0, 0, 0]
  if variant == "synthetic":
    c = nonlocal_i3d.synthetic_config(c)
    c.model.backbone.nonlocal_blocks.blocks_per_stage = [0, 0, 0, 0]
  return c
