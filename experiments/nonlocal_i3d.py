"""nonlocal_i3d: ResNet3D-50 with non-local blocks (Liao et al., "Video-based Person
Re-identification via 3D Convolutional Networks and Non-local Attention").

Command (MARS):

    python -m tfreid.train --experiment=nonlocal_i3d --data_dir=DATA/mars --model_dir=runs/nl
    python -m tfreid.evaluate --model_dir=runs/nl          # the final checkpoint

Configuration (section 4.2 unless said otherwise): ResNet3D-50 with temporally separable
inflated convolutions (section 3.1, fig. 3(d)); 5 embedded-Gaussian non-local blocks (2 in
res3, 3 in res4, on every other residual block, "right before the last residual block of a
stage"); 8-frame 256x128 clips, randomly cropped from frames enlarged by 1/8; PK batches of
32 identities x 4 tracks = 128; bottleneck FC + BN + LeakyReLU(0.1) + dropout 0.5;
label-smoothed cross-entropy (eq. 9) + batch-hard triplet (eq. 7), summed (eq. 10); Adam,
lr 3e-4, weight decay 5e-4; 300 epochs, exponential decay with rate 0.001 from epoch 150.

Temporal sampling, training and test alike (one time scale): clips of 8 *consecutive* frames
(data.sample_stride=1, data.test_sample_stride=1). Section 3 divides a tracklet into
"consecutive non-overlap tracks" and section 3.1 says the model "takes T consecutive frames";
the test clips are those tracks (every non-overlapping 8-frame clip, embeddings averaged).
Section 4.2's "eight-frame input tracks are randomly cropped out from 64 consecutive frames
every eight frames" also reads as 8 frames 8 apart; that reading is variant `stride8`, which
takes test clips at the same stride (frames 8 apart, every frame in one clip), so the
temporal convolutions and non-local blocks are never tested at another spacing than they
were trained on. At stride 8 a clip spans 57 frames: shorter tracklets (many of MARS's) are
padded by cyclic repetition in training and test alike (tfreid/data/samplers.py).

Variants, the row of the paper each reproduces, and that row (MARS: rank-1 / rank-5 /
rank-10 / mAP, %; the paper does not print rank-20):

  ""              ImageNet-inflated initialisation: table 3, row "ImageNet":
                  78.4 / 91.5 / 93.9 / 69.8.
  init_imagenet   the same configuration, named after table 3: row "ImageNet",
                  78.4 / 91.5 / 93.9 / 69.8.
  init_reid       2-D ResNet-50 trained on ReID data (CUHK03, VIPeR, DukeMTMC-reID), inflated;
                  weights from model.backbone.weights_path: table 3, row "ReID",
                  79.9 / 92.6 / 94.5 / 71.3.
  init_kinetics   3-D weights pre-trained on Kinetics, from model.backbone.weights_path:
                  table 2, row "ResNet3D-50 NL" = table 3, row "Kinetics",
                  84.3 / 94.6 / 96.2 / 77.0 (the paper's headline result, table 4).
  resnet3d        no non-local blocks, ImageNet-inflated: no row of the paper. Table 2's
                  "ResNet3D-50" (80.0 / 92.2 / 94.5 / 72.6) is Kinetics-initialised; with
                  --override=model.backbone.init=kinetics and weights_path set to Kinetics
                  weights of a ResNet3D-50 without non-local blocks, this is that row.
  stride8         "" with section 4.2 read as 8 frames 8 apart, in training and test:
                  table 3, row "ImageNet", 78.4 / 91.5 / 93.9 / 69.8.
  ilidsvid        fine-tuned from a MARS model (section 4.4.2; needs
                  --override=trainer.init_checkpoint=runs/nl): table 4, column iLIDS-VID,
                  rank-1 81.3 (mean of 10 splits; only rank-1 is printed). The paper
                  fine-tunes its Kinetics-initialised MARS model: the row is reproduced from
                  an `init_kinetics` MARS run only.
  prid2011        likewise: table 4, column PRID2011, rank-1 91.2.
  synthetic       a narrow network at 64x32 on the built-in synthetic dataset (CPU, minutes;
                  README quickstart): no row of the paper.

Every variant's known deviations from the paper:

* Initialisation: "", init_imagenet, resnet3d, stride8 and synthetic (no init) do not start
  from Kinetics, which table 2 uses; their numbers are not table 2's. No pretrained file is
  downloaded: ImageNet weights come from keras.applications or model.backbone.weights_path.
* Library choices the paper does not state: the bottleneck's 512 outputs
  (model.head.embedding_dim), label smoothing eps = 0.1 (losses.cross_entropy), triplet
  margin 0.3, last_stride 1 (a 16 x 8 res5 map), the random horizontal flip
  (data.augmentation.flip), test clips averaged into the tracklet embedding.
* Triplet reduction: the triplet term is the mean over the anchors (losses.triplet.reduction
  =mean); eq. 7 prints a sum, which beside the mean cross-entropy of eq. 9 weighs the
  triplet term P x K = 128 times more in eq. 10. `--override=losses.triplet.reduction=sum`
  is the printed form (tfreid/losses/triplet.py).
* Non-local placement: before blocks 2, 4 of res3 and 2, 4, 6 of res4, as the text says
  ("right before the last residual block"); the code released with the non-local paper
  puts them one block later: `--override=model.backbone.nonlocal_blocks.placement=after`.
* Cross-entropy: the target-smoothing form the text and [35] describe, not eq. 9 as printed
  (tfreid/losses/cross_entropy.py). Inflation: identity temporal kernels instead of the 1/t
  rule (tfreid/backbones/resnet3d.py). Weight decay as an L2 term in the loss; "exponential
  decay with decay rate 0.001 at 150 epochs" read as a decay from epoch 150 to 0.001 x lr
  at epoch 300.
* Model selection: reported numbers are those of the final checkpoint. Periodic evaluation
  (every 50 epochs) evaluates on the test set; the `best` checkpoint it keeps is selected on
  the test set, and is not a source for reported numbers or for fine-tuning.
* ilidsvid, prid2011: the fine-tuning schedule (100 epochs, decay from epoch 50) is the
  library's; the paper does not give it. Frames are resized to 256x128 (the datasets' frames
  are 128x64).
"""

from tfreid import config as cfg
from tfreid.losses import cross_entropy, triplet

VARIANTS = ("", "resnet3d", "init_imagenet", "init_reid", "init_kinetics", "stride8",
            "ilidsvid", "prid2011", "synthetic")

# The row of the paper each variant reproduces: (table and row, {metric: %}), or None when
# the paper has no row for it (the docstring says why). Metrics the paper prints only.
_IMAGENET = ("table 3, ImageNet", {"rank1": 78.4, "rank5": 91.5, "rank10": 93.9, "mAP": 69.8})
PAPER_RESULTS = {
    "": _IMAGENET,
    "init_imagenet": _IMAGENET,
    "stride8": _IMAGENET,
    "init_reid": ("table 3, ReID", {"rank1": 79.9, "rank5": 92.6, "rank10": 94.5, "mAP": 71.3}),
    "init_kinetics": ("table 2, ResNet3D-50 NL (table 3, Kinetics)",
                      {"rank1": 84.3, "rank5": 94.6, "rank10": 96.2, "mAP": 77.0}),
    "resnet3d": None,
    "ilidsvid": ("table 4, iLIDS-VID", {"rank1": 81.3}),
    "prid2011": ("table 4, PRID2011", {"rank1": 91.2}),
    "synthetic": None,
}


def paper_config() -> cfg.ExperimentConfig:
  """Section 4.2 of the paper, on MARS (module docstring: the readings and deviations)."""
  c = cfg.ExperimentConfig()
  c.data.height, c.data.width, c.data.seq_len = 256, 128, 8
  c.data.train_sampler = "consecutive"
  # Consecutive frames in training and test (sections 3 and 3.1); variant stride8: 8 apart.
  c.data.sample_stride = 1
  c.data.test_sample_stride = 1
  c.data.test_sampler = "dense"
  c.data.num_identities, c.data.num_instances = 32, 4
  # crop_enlarge: section 4.2; flip: a library choice.
  c.data.augmentation = cfg.AugmentationConfig(crop_enlarge=0.125, flip=True)
  c.model = cfg.ModelConfig(
      name="nonlocal_i3d",
      backbone=cfg.BackboneConfig(
          name="resnet3d", block_counts=[3, 4, 6, 3], base_width=64,
          last_stride=1,  # library choice
          temporal_kernel=3, init="imagenet",
          nonlocal_blocks=cfg.NonLocalConfig(blocks_per_stage=[0, 2, 3, 0],
                                             bottleneck_ratio=0.5, subsample=True,
                                             placement="before")),
      # 512: library choice; LeakyReLU 0.1 and dropout 0.5: section 4.2.
      head=cfg.HeadConfig(embedding_dim=512, leaky_relu_alpha=0.1, dropout=0.5))
  c.losses = cfg.LossesConfig(
      # eps = 0.1 and margin 0.3: library choices (the paper prints neither).
      cross_entropy=cross_entropy.Config(weight=1.0, label_smoothing=0.1),
      triplet=triplet.Config(weight=1.0, margin=0.3, mining="batch_hard", reduction="mean"))
  c.optimizer = cfg.OptimizerConfig(name="adam", learning_rate=3e-4, weight_decay=5e-4,
                                    weight_decay_mode="l2")
  c.schedule = cfg.ScheduleConfig(name="exponential", decay_start_epoch=150,
                                  decay_epochs=150, decay_rate=0.001)
  c.trainer.epochs = 300
  # Progress only: evaluates on the test set, so its `best` checkpoint is test-selected.
  c.trainer.eval_every_epochs = 50
  c.eval.protocol = "torchreid"
  return c


def synthetic_config(c: cfg.ExperimentConfig) -> cfg.ExperimentConfig:
  """Scaled down to train on a laptop CPU in minutes; same structure as the paper's."""
  c.data.data_dir = "runs/data/synthetic"
  c.data.height, c.data.width, c.data.seq_len = 64, 32, 4
  c.data.sample_stride = 1  # synthetic tracklets are short (tens of frames)
  c.data.test_sample_stride = 1
  c.data.num_identities, c.data.num_instances = 8, 4
  c.data.test_batch_size = 64
  c.model.backbone.block_counts = [1, 2, 2, 1]
  c.model.backbone.base_width = 8
  c.model.backbone.init = "none"
  c.model.backbone.nonlocal_blocks.blocks_per_stage = [0, 1, 1, 0]
  c.model.head.embedding_dim = 128
  c.optimizer.learning_rate = 1e-3
  c.schedule = cfg.ScheduleConfig(name="exponential", decay_start_epoch=40, decay_epochs=20,
                                  decay_rate=0.01)
  c.trainer.epochs = 60
  c.trainer.checkpoint_every_steps = 100
  c.trainer.log_every_steps = 5
  c.trainer.image_summary_every_steps = 100
  c.trainer.eval_every_epochs = 0
  return c


def get_config(variant: str = "") -> cfg.ExperimentConfig:
  c = paper_config()
  if variant == "resnet3d":
    c.model.backbone.nonlocal_blocks.blocks_per_stage = [0, 0, 0, 0]
  elif variant == "init_imagenet":
    c.model.backbone.init = "imagenet"
  elif variant == "init_reid":
    c.model.backbone.init = "reid"
    c.model.backbone.weights_path = "weights/resnet50_reid.weights.h5"
  elif variant == "init_kinetics":
    c.model.backbone.init = "kinetics"
    c.model.backbone.weights_path = "weights/resnet3d50_nl_kinetics.weights.h5"
  elif variant == "stride8":
    # Section 4.2 read as "8 frames, every eighth of 64 consecutive ones"; test clips at the
    # same stride.
    c.data.sample_stride = 8
    c.data.test_sample_stride = 8
  elif variant in ("ilidsvid", "prid2011"):
    # Section 4.4.2: fine-tuned from the MARS model; the small datasets are evaluated with
    # the closed-set 10-split protocol (mean over data.split=0..9). The paper does not give
    # the fine-tuning schedule: 100 epochs, decaying from epoch 50, is this library's choice.
    # Without trainer.init_checkpoint the run stops (models/nonlocal_i3d.py validate_config).
    c.model.backbone.init = "none"
    c.model.nonlocal_i3d.requires_init_checkpoint = True
    c.trainer.epochs = 100
    c.schedule = cfg.ScheduleConfig(name="exponential", decay_start_epoch=50,
                                    decay_epochs=50, decay_rate=0.001)
  elif variant == "synthetic":
    c = synthetic_config(c)
  return c
