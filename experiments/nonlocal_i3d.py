"""nonlocal_i3d: ResNet3D-50 with non-local blocks (Liao et al., "Video-based Person
Re-identification via 3D Convolutional Networks and Non-local Attention").

Command (MARS, the paper's configuration, section 4.2):

    python -m tfreid.train --experiment=nonlocal_i3d --data_dir=DATA/mars --model_dir=runs/nl

Paper's configuration (section 4.2): ResNet3D-50 with temporally separable inflated
convolutions (section 3.1, fig. 3d), 5 embedded-Gaussian non-local blocks (2 in res3, 3 in
res4, on every other residual block, right before the last block of a stage); input tracks
of 8 frames taken every eighth frame of 64 consecutive ones ("eight-frame input tracks are
randomly cropped out from 64 consecutive frames every eight frames": a consecutive clip with
stride 8 from a random start, `data.sample_stride=8`), 256x128, randomly cropped from frames
enlarged by 1/8; PK batches of
32 identities x 4 tracks = 128; bottleneck FC + BN + LeakyReLU(0.1) + dropout 0.5;
label-smoothed cross-entropy (eq. 9) + batch-hard triplet (eq. 7), summed (eq. 10); Adam,
lr 3e-4, weight decay 5e-4; 300 epochs, exponential decay with rate 0.001 from epoch 150.

Paper's reported results:
  MARS (table 2, "ResNet3D-50 NL", Kinetics init): rank-1 84.3, rank-5 94.6, rank-10 96.2,
    mAP 77.0.
  Ablations (table 2): baseline (2-D ResNet-50 + temporal average pooling, experiment
    `temporal_pooling`) 77.9 / mAP 69.0; ResNet3D-50 without non-local (variant
    `resnet3d`) 80.0 / mAP 72.6.
  Initialisation (table 3): ImageNet 78.4 / 69.8; ReID 79.9 / 71.3; Kinetics 84.3 / 77.0.
  Table 4 (rank-1): PRID-2011 91.2, iLIDS-VID 81.3, both fine-tuned from the MARS model
    (section 4.4.2; variants `prid2011`, `ilidsvid`).

Variants:
  ""             the paper's MARS configuration (ImageNet-inflated weights unless
                 --override=model.backbone.init=kinetics with a local weights file).
  resnet3d       table 2 ablation: no non-local blocks.
  init_imagenet, init_reid, init_kinetics
                 table 3 initialisations (reid and kinetics read model.backbone.weights_path).
  ilidsvid, prid2011
                 section 4.4.2: fine-tune from a MARS checkpoint
                 (--override=trainer.init_checkpoint=runs/nl/ckpt-N).
  synthetic      narrow network at 64x32 on the built-in synthetic dataset; trains on a
                 CPU in minutes (README quickstart).
"""

from tfreid import config as cfg
from tfreid.losses import cross_entropy, triplet

VARIANTS = ("", "resnet3d", "init_imagenet", "init_reid", "init_kinetics", "ilidsvid",
            "prid2011", "synthetic")


def paper_config() -> cfg.ExperimentConfig:
  """Section 4.2 of the paper, on MARS."""
  c = cfg.ExperimentConfig()
  c.data.height, c.data.width, c.data.seq_len = 256, 128, 8
  c.data.train_sampler = "consecutive"
  c.data.sample_stride = 8
  c.data.test_sampler = "dense"
  c.data.num_identities, c.data.num_instances = 32, 4
  c.data.augmentation = cfg.AugmentationConfig(crop_enlarge=0.125, flip=True)
  c.model = cfg.ModelConfig(
      name="nonlocal_i3d",
      backbone=cfg.BackboneConfig(
          name="resnet3d", block_counts=[3, 4, 6, 3], base_width=64, last_stride=1,
          temporal_kernel=3, init="imagenet",
          nonlocal_blocks=cfg.NonLocalConfig(blocks_per_stage=[0, 2, 3, 0],
                                             bottleneck_ratio=0.5, subsample=True)),
      head=cfg.HeadConfig(embedding_dim=512, leaky_relu_alpha=0.1, dropout=0.5))
  c.losses = cfg.LossesConfig(
      cross_entropy=cross_entropy.Config(weight=1.0, label_smoothing=0.1),
      triplet=triplet.Config(weight=1.0, margin=0.3, mining="batch_hard"))
  c.optimizer = cfg.OptimizerConfig(name="adam", learning_rate=3e-4, weight_decay=5e-4,
                                    weight_decay_mode="l2")
  c.schedule = cfg.ScheduleConfig(name="exponential", decay_start_epoch=150,
                                  decay_epochs=150, decay_rate=0.001)
  c.trainer.epochs = 300
  c.trainer.eval_every_epochs = 50
  c.eval.protocol = "torchreid"
  return c


def synthetic_config(c: cfg.ExperimentConfig) -> cfg.ExperimentConfig:
  """Scaled down to train on a laptop CPU in minutes; same structure as the paper's."""
  c.data.data_dir = "runs/data/synthetic"
  c.data.height, c.data.width, c.data.seq_len = 64, 32, 4
  c.data.sample_stride = 1  # synthetic tracklets are short (tens of frames)
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
  elif variant in ("ilidsvid", "prid2011"):
    # Section 4.4.2: fine-tuned from the MARS model; the small datasets are evaluated with
    # the closed-set 10-split protocol (mean over data.split=0..9). The paper does not give
    # the fine-tuning schedule: 100 epochs, decaying from epoch 50, is this library's choice.
    c.model.backbone.init = "none"
    c.trainer.epochs = 100
    c.schedule = cfg.ScheduleConfig(name="exponential", decay_start_epoch=50,
                                    decay_epochs=50, decay_rate=0.001)
  elif variant == "synthetic":
    c = synthetic_config(c)
  return c
