"""stal: spatial-temporal attention-aware learning (Chen et al., "Spatial-Temporal
Attention-Aware Learning for Video-Based Person Re-Identification", IEEE TIP 2019).

Commands (the datasets converted with --keypoints, see the README's STAL section):

    python -m tfreid.train --experiment=stal --data_dir=DATA/mars_kp --model_dir=runs/stal
    python -m tfreid.splits --experiment=stal:ilidsvid --data_dir=DATA/ilidsvid_kp \\
        --model_dir=runs/stal_ilids
    python -m tfreid.splits --experiment=stal:prid2011 --data_dir=DATA/prid_kp \\
        --model_dir=runs/stal_prid
    make quickstart EXPERIMENT=stal:synthetic

The paper's configuration (sections III and IV-A, Table I): BN-Inception split at
inception-4b; the global branch 4c + residual attention, 4d .. 5b, average pooling (1024);
six pose-guided parts (eq. 7) ROI-pooled to 8 x 8 from the 4b map into six part networks
(4c, 4d, 4e copies + fc_part 1024); STAN's T x R scores; frames resized to 224 x 224 (the
crops are stretched), T = 8 random frames per video, no augmentation; the objective of
eq. 3: global triplet (m_g = 1.2) + 0.3 x local triplet on psi (m_l = 0.8) (eq. 4) +
identity softmax loss (eq. 5) + consistency constraint (eq. 6); SGD, momentum 0.9, lr
1e-3, weight decay 2e-4, "gamma 0.5"; ImageNet initialisation; at test every frame of a
tracklet, d = d_l + 0.3 d_g.

Library choices (the paper is silent or its setting does not carry over):
  - batches: the paper feeds one triplet of videos per batch; here PK batches of
    2 identities x 2 clips per replica with every valid triplet of the batch (batch_all),
    which contains such triplets (the hinge of eq. 4 averaged over them).
  - the learning rate halves every quarter of the run (the paper gives gamma 0.5, no step).
  - iterations: MARS 150,000 = 300 epochs of 500 steps; iLIDS-VID 13,500; PRID 6,500.
  - ImageNet BN-Inception weights from a local file (model.backbone.weights_path, format in
    `tfreid.backbones.bn_inception.WEIGHTS_FORMAT`); none is downloaded.
  - keypoints from an offline pose estimator (the converter's --keypoints, e.g. the COCO-17
    output of MMPose / YOLO-pose / OpenPose mapped to the 14 joints); the paper refines its
    estimator end to end, which min/max boxes cannot pass gradients to.
  - the MARS protocol: eval.protocol=mars_matlab.

Paper's results:
  Table V, MARS R1/R5/R20/mAP: STAL 80.3/90.9/96.5/64.5; Baseline 71.5/83.3/89.9/50.8;
    STAL+ResNet50 82.2/92.8/98.0/73.5 (variant resnet50:
    python -m tfreid.train --experiment=stal:resnet50 --data_dir=DATA/mars_kp \\
        --model_dir=runs/stal_resnet50).
  Table III, iLIDS-VID R1/R5/R10/R20: STAL 82.8/95.3/97.7/98.8; Baseline 76.7/93.5/96.4/98.5.
  Table IV, PRID-2011: STAL 92.7/98.8/99.5/100; Baseline 90.3/98.7/99.6/99.6.
  Table VI, train iLIDS-VID, test PRID: 63.7/84.0/92.8/98.1 (evaluate an ilidsvid run with
    python -m tfreid.evaluate --model_dir=RUN --data_dir=DATA/prid_kp).
  Table VII, polluted iLIDS-VID: STAL 78.4/96.2/98.7/99.6, Baseline 70.2/89.9/93.5/97.9
    (variant polluted: python -m tfreid.splits --experiment=stal:polluted \\
    --data_dir=DATA/ilidsvid_kp --model_dir=runs/stal_polluted; the Baseline row is the same
    runs evaluated with both attention switches off, as in Fig. 5).

Ablations (iLIDS-VID; the figures give curves, the rank-1 values are read off them where
the text states them). "Baseline" in the tables is the same model with ones for the
attention scores. The test-time switches of Fig. 5-8 (model.stal.temporal_attention,
spatial_attention, test_distance, test_parts, global_distance_weight) change no weight:
the model module lists them (TEST_TIME_KEYS), so `tfreid.evaluate --override` sets them on
a trained run, e.g. TAN:

    python -m tfreid.evaluate --model_dir=runs/stal --output_dir=runs/stal/eval_tan \
        --override=model.stal.spatial_attention=false

  Fig. 5 Baseline / TAN / SAN / STAL: one trained model, tested with
      temporal_attention: false and spatial_attention: false (Baseline),
      spatial_attention: false (TAN), temporal_attention: false (SAN), both on (STAL).
  Fig. 6 PGB / PLB (one branch trained and tested): variants global_only, local_only;
      GB / LB (joint training, one branch tested): test_distance: global (or local);
      without RAN: variant no_ran.
  Fig. 7 one part (local branch only): test_distance: local and test_parts: [1] (0 head,
      1 torso, 2 right arm, 3 left arm, 4 right leg, 5 left leg).
  Fig. 8 fusion rate 0..1 (best 0.3): global_distance_weight: W.
  Fig. 9 embedding 128..2048 (1024 chosen): --override=model.stal.global_embedding_dim=D
      --override=model.stal.local_embedding_dim=D.
  Fig. 10 margins 0.4..2.0: --override=losses.global_triplet.margin=M
      --override=losses.local_triplet.margin=M.
  Fig. 11 probe x gallery lengths 1..128 (diagonal rank-1 0.55, 0.68, 0.76, 0.78, 0.79,
      0.80, 0.81, 0.82; all x all 0.82): L_p frames drawn from each probe tracklet and L_g
      from each gallery one, e.g. python -m tfreid.evaluate --model_dir=RUN
      --override=eval.query_seq_len=4 --override=eval.gallery_seq_len=16 (0: all frames).

Variants:
  ""             the paper's MARS configuration.
  ilidsvid, prid2011
                 the 10-split protocol (tfreid.splits), ImageNet initialisation, 13,500 /
                 6,500 iterations.
  polluted       Table VII: ilidsvid with data.occlusion_box=25, a 25 x 25 black box (in
                 the stored 64 x 128 frames' pixels) in every frame of training and test
                 clips; the paper says "random", the placement (uniform where it fits, fixed
                 per frame by a hash of data.occlusion_seed, tracklet and frame) is the
                 library's (tfreid.config.DataConfig). Exported models do not draw it.
  no_ran, global_only, local_only
                 Fig. 6 rows (on iLIDS-VID: add --data_dir of iLIDS-VID; the variants keep
                 the MARS schedule, combine with the ilidsvid settings by overrides).
  resnet50       Table V's STAL + ResNet50 on MARS: the branches cut from ResNet-50
                 (res1-res4 low level, res5 global trunk, res5 copies + fc_part 1024 per
                 part; the paper gives the row only, the cut is the library's, see
                 tfreid.models.stal); ImageNet weights from keras.applications or a Keras
                 ResNet-50 weights file (model.backbone.weights_path).
  synthetic      a narrow network (width / 16) at 128 x 64, 4 x 4 part bins, 300 steps
                 without XLA, on the built-in synthetic dataset (README quickstart).

"""

from tfreid import config as cfg
from tfreid.losses import cross_entropy, triplet

from tfreid.losses import part_consistency

VARIANTS = ("", "ilidsvid", "prid2011", "polluted", "no_ran", "global_only", "local_only",
            "resnet50", "synthetic")


def paper_config() -> cfg.ExperimentConfig:
  """Sections III and IV-A of the paper, on MARS."""
  c = cfg.ExperimentConfig()
  c.data.height, c.data.width, c.data.seq_len = 224, 224, 8
  c.data.train_sampler = "random"
  c.data.test_sampler = "dense"
  c.data.num_identities, c.data.num_instances = 2, 2
  c.data.test_batch_size = 8
  c.data.augmentation = cfg.AugmentationConfig(crop_enlarge=0.0, flip=False)
  c.model = cfg.ModelConfig(
      name="stal",
      backbone=cfg.BackboneConfig(name="bn_inception", init="imagenet",
                                  weights_path="weights/bn_inception_imagenet.npz"))
  c.model.stal.global_embedding_dim = 1024
  c.model.stal.local_embedding_dim = 1024
  c.model.stal.global_distance_weight = 0.3
  c.losses = cfg.LossesConfig(
      global_triplet=triplet.Config(weight=1.0, margin=1.2, mining="batch_all",
                                    distance="global"),
      local_triplet=triplet.Config(weight=0.3, margin=0.8, mining="batch_all",
                                   distance="local"),
      cross_entropy=cross_entropy.Config(weight=1.0, label_smoothing=0.0),
      consistency=part_consistency.Config(weight=1.0))
  c.optimizer = cfg.OptimizerConfig(name="sgd", learning_rate=1e-3, momentum=0.9,
                                    weight_decay=2e-4, weight_decay_mode="l2")
  c.trainer.steps_per_epoch = 500
  c.trainer.epochs = 300
  c.schedule = cfg.ScheduleConfig(name="step", step_epochs=75, step_factor=0.5)
  c.trainer.eval_every_epochs = 0
  c.eval.protocol = "mars_matlab"
  return c


def _small_dataset(c: cfg.ExperimentConfig, iterations: int) -> cfg.ExperimentConfig:
  """iLIDS-VID / PRID-2011: `iterations` steps, the rate halved every quarter."""
  c.trainer.steps_per_epoch = 100
  c.trainer.epochs = iterations // 100
  c.schedule.step_epochs = max(1, c.trainer.epochs // 4)
  c.eval.protocol = "torchreid"
  return c


def synthetic_config(c: cfg.ExperimentConfig) -> cfg.ExperimentConfig:
  """Scaled down to train on a 2-core CPU in minutes; the paper's structure and losses.

  Without XLA (library choice for this variant): compiling the seven inception stacks takes
  longer on a CPU than the whole run; the paper configuration keeps runtime.jit_compile.
  """
  c.data.data_dir = "runs/data/synthetic_easy"
  c.data.height, c.data.width, c.data.seq_len = 128, 64, 4
  c.data.num_identities, c.data.num_instances = 8, 2
  c.data.test_batch_size = 32
  c.model.backbone.init = "none"
  c.model.backbone.weights_path = ""
  c.model.stal.width_divisor = 16
  c.model.stal.global_embedding_dim = 128
  c.model.stal.local_embedding_dim = 64
  c.model.stal.attention_channels = 256
  c.model.stal.pool_size = 4
  c.optimizer = cfg.OptimizerConfig(name="adam", learning_rate=1e-3, weight_decay=5e-4,
                                    weight_decay_mode="l2")
  c.schedule = cfg.ScheduleConfig(name="step", step_epochs=10, step_factor=0.5)
  c.trainer.steps_per_epoch = 20
  c.trainer.epochs = 15
  c.trainer.checkpoint_every_steps = 100
  c.trainer.log_every_steps = 10
  c.trainer.image_summary_every_steps = 100
  c.runtime.jit_compile = False
  c.eval.protocol = "torchreid"
  return c


def resnet50_config(c: cfg.ExperimentConfig) -> cfg.ExperimentConfig:
  """Table V's STAL + ResNet50 on MARS. The paper gives only the row; the split is the
  library's (`tfreid.models.stal`): res1..res4 the low-level CNN (stride 16, as 4b), res5
  the global trunk with the residual attention on its input, res5 copies + fc_part 1024 the
  part networks; the global feature is projected from 2048 to 1024 (Fig. 9's size). ImageNet
  weights from keras.applications, or a Keras ResNet-50 weights file in
  model.backbone.weights_path."""
  c.model.backbone = cfg.BackboneConfig(name="resnet2d", init="imagenet", weights_path="",
                                        last_stride=2, block_counts=[3, 4, 6, 3],
                                        base_width=64)
  c.model.backbone.nonlocal_blocks.blocks_per_stage = [0, 0, 0, 0]
  return c


def get_config(variant: str = "") -> cfg.ExperimentConfig:
  if variant not in VARIANTS:
    raise ValueError(f"unknown stal variant {variant!r}; expected one of {VARIANTS}.")
  c = paper_config()
  if variant == "ilidsvid":
    c = _small_dataset(c, 13_500)
  elif variant == "prid2011":
    c = _small_dataset(c, 6_500)
  elif variant == "polluted":
    # Table VII: iLIDS-VID with a 25 x 25 black box in every frame, training and test.
    c = _small_dataset(c, 13_500)
    c.data.occlusion_box = 25
  elif variant == "no_ran":
    c.model.stal.residual_attention = False
  elif variant == "global_only":
    c.losses.local_triplet.weight = 0.0
    c.losses.consistency.weight = 0.0
    c.model.stal.test_distance = "global"
  elif variant == "local_only":
    c.losses.global_triplet.weight = 0.0
    c.losses.cross_entropy.weight = 0.0
    c.model.stal.test_distance = "local"
  elif variant == "resnet50":
    c = resnet50_config(c)
  elif variant == "synthetic":
    c = synthetic_config(c)
  return c
