"""temporal_pooling: the baseline of all five papers. A 2-D ResNet-50 applied to every frame,
features averaged over time (nonlocal_i3d table 2 "Baseline"; fig. 1A).

Command:

    python -m tfreid.train --experiment=temporal_pooling --data_dir=DATA/mars --model_dir=runs/tp
    python -m tfreid.evaluate --model_dir=runs/tp          # the final checkpoint

Configuration: nonlocal_i3d's training recipe (section 4.2: 256x128 frames, PK 32x4,
cross-entropy with label smoothing + batch-hard triplet, Adam 3e-4, weight decay 5e-4, 300
epochs; with its library choices: 512-d embedding, eps 0.1, margin 0.3, last stride 1,
horizontal flip, mean triplet reduction) on a 2-D ResNet-50 initialised from ImageNet. Test:
every non-overlapping clip of 8 consecutive frames, per-frame features averaged over time,
clip embeddings averaged per tracklet.

The paper's row (table 2, "Baseline", MARS): rank-1 77.9, rank-5 90.0, rank-10 92.5,
mAP 69.0. Its baseline is "ResNet-50 trained with softmax cross-entropy loss and triplet
with hard mining on image-based person ReID" (section 4.3.1): a network trained on single
images, whose frame features are averaged at test time. How the variants relate to it:

  ""          deviation: trained on clips of 8 consecutive frames (a PK batch of 128
              clips, the embedding of a clip being the mean over its frames), so the
              losses see temporally pooled features, not single images; table 2,
              "Baseline", 77.9 / 90.0 / 92.5 / 69.0 is the row it stands for.
  image       trained on single frames (data.seq_len=1: each PK sample is one random frame
              of a tracklet, a batch of 128 images) and tested on 8-frame clips
              (data.test_seq_len=8), averaged: the paper's description of its baseline,
              table 2, "Baseline", 77.9 / 90.0 / 92.5 / 69.0. Remaining deviation: the
              images are MARS frames, where the paper does not say which image dataset it
              trained on.
  synthetic   the same narrow sizes as nonlocal_i3d:synthetic, for side-by-side comparison
              on the built-in synthetic dataset: no row of the paper.

Every variant also has the deviations nonlocal_i3d lists for its shared recipe (library
choices above; reported numbers from the final checkpoint, `best` being selected on the test
set).
"""

from experiments import nonlocal_i3d
from tfreid import config as cfg

VARIANTS = ("", "image", "synthetic")

_BASELINE = ("table 2, Baseline", {"rank1": 77.9, "rank5": 90.0, "rank10": 92.5, "mAP": 69.0})
# The row of the paper each variant reproduces (nonlocal_i3d.PAPER_RESULTS's convention).
PAPER_RESULTS = {"": _BASELINE, "image": _BASELINE, "synthetic": None}


def get_config(variant: str = "") -> cfg.ExperimentConfig:
  c = nonlocal_i3d.paper_config()
  c.model.name = "temporal_pooling"
  c.model.backbone.name = "resnet2d"
  c.model.backbone.nonlocal_blocks.blocks_per_stage = [0, 0, 0, 0]
  if variant == "image":
    c.data.seq_len = 1
    c.data.test_seq_len = 8
  elif variant == "synthetic":
    c = nonlocal_i3d.synthetic_config(c)
    c.model.backbone.nonlocal_blocks.blocks_per_stage = [0, 0, 0, 0]
  return c
