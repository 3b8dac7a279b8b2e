"""siamese_convgru: deep Siamese attention networks with stacked ConvGRUs (Wu, Wang, Gao, Li,
"Where-and-When to Look: Deep Siamese Attention Networks for Video-based Person
Re-identification").

Command (iLIDS-VID, the paper's main dataset; 10 splits with `python -m tfreid.splits`):

    python -m tfreid.train --experiment=siamese_convgru --data_dir=DATA/ilidsvid --model_dir=runs/sc
    python -m tfreid.splits --experiment=siamese_convgru:ilidsvid --data_dir=DATA/ilidsvid \\
        --model_dir=runs/sc_ilidsvid

GoogLeNet's ImageNet weights are read from `weights/googlenet_imagenet.npz` (format in
tfreid/backbones/googlenet.py; `--override=model.backbone.weights_path=PATH`, or
`--override=model.backbone.init=none` to start from scratch).

Paper's configuration (sections III, IV, V-B; ``siamese_convgru`` = ``:ilidsvid``):
  - GoogLeNet inception_5b feature cubes, 7 x 7 x 1024 from 224 x 224 frames (the paper does
    not give the input size; 7 x 7 implies 224 x 224), ImageNet weights, fine-tuned;
  - spatial soft attention on the recurrent state (eqs. 3-4); 3 ConvGRU layers of 128, 256,
    256 channels (eq. 5), kernels 3 x 3 into layer 1 and 5 x 5 for layers 2 and 3 (table II
    "Ours_G(5x5, 5x5)"; section V-B says "all 5 x 5": --override=
    model.siamese_convgru.kernel_sizes=[5,5,5]), 2 x 2 max-pooling between layers,
    no gate biases, initial state from the mean feature (eq. 7), temporal attention pooling
    (eq. 6), dropout 0.7, similarity s = sigma(v^T (h^a ⊙ h^b) + c) (eq. 8);
  - 10 pairs per mini-batch, positives and negatives 1:1 across cameras (P = 5 identities x
    K = 2 tracklets from different cameras, `data.tracklet_sampler=cross_camera`, loss
    `balanced_pair_bce`), T = 20 consecutive frames from a random start, redrawn every epoch;
    loss eq. 9 = pair cross-entropy + lambda * attention penalty, lambda = 1 (fig. 5a);
  - RMSProp, gradients clipped element-wise to [-5, 5]; no weight decay (none is mentioned);
  - augmentation: mirroring, crops, translation by up to 5% of height and width;
  - 1000 epochs on iLIDS-VID and PRID-2011, 2000 on MARS; an epoch is N_train / P steps
    (each training identity in one positive pair: RCN's 2 N_train pairs per epoch);
  - test: 128-frame clips (`data.test_seq_len=128`), camera 1 probe vs camera 2 gallery,
    CMC over 10 splits.

Library choices where the paper is silent (each also in the code): learning rate 1e-4,
RMSProp rho 0.9 and momentum 0 (RMSProp as in its reference, Tieleman and Hinton; the
library's default momentum 0.9 is switched off), constant schedule; v of eq. 8 starts at
1/32, c at 0; W_i of eq. 3 starts at 0 (uniform attention, where eq. 9's penalty has no
gradient: a random W_i let the penalty drive h_bar to 0, the saddle of eq. 8, and the pair
loss stayed at log 2, tests/test_siamese_convgru_learning.py); the distance is 1 - s
(eval.distance=model; section V-C ranks by "Euclidean distances", `--override=
eval.distance=euclidean`). The ConvGRU kernels start from the paper's U[-1, 1] (section V-B);
Glorot-uniform (`--override=model.siamese_convgru.gru_init_range=0`) is an option, used by the
synthetic variant (see there).

Table VII's metric-learning rows (PCA to 150 dimensions, then LFDA or KISSME fitted on the
training tracklets' features; evaluation only, tfreid/metric_learning.py), on a trained run:

  table VII        +LFDA    iLIDS-VID 61.4/83.4/91.0/97.9  PRID 75.7/94.8/98.3/98.8  MARS 71.3/85.1/89.5/96.9
                   +KISSME  iLIDS-VID 61.9/86.8/94.7/98.6  PRID 77.0/96.4/99.2/99.4  MARS 73.5/85.0/89.5/97.5

    python -m tfreid.metric_learning --model_dir=runs/sc --method=lfda     # or kissme

Table IV's Fisher-vector pooling row (eq. 10, evaluation only, tfreid/fisher_vector.py): a
diagonal GMM of C components fitted by EM on the training tracklets' frame-level states h_t
(the top ConvGRU layer's, flattened: `frame_states`), every query and gallery tracklet encoded
as its 2DC-dimensional Fisher vector over all its frames, ranked by the Euclidean distance.
The paper gives neither C nor the distance: C = 16 and Euclidean are the library's choices,
as the optional signed-square-root + L2 normalisation (`--fv_normalization=power_l2`; default
none, eq. 10 as written).

  table IV         Fisher vector  iLIDS-VID 63.2/80.9/92.2/97.5  PRID 79.2/92.7/97.4/98.1  MARS 70.4/85.0/89.6/93.2

    python -m tfreid.metric_learning --model_dir=runs/sc --method=fisher_vector --components=16

Test-time augmentation (section V-B): query and gallery tracklets shorter than 128 frames
are also embedded mirrored and translated, and a pair's distance 1 - s is averaged over
the conditions (`eval.tta_*`, evaluation only: the SavedModel embeds plain clips). The
paper does not list its conditions; 2 mirror states x 8 diagonal shifts over +-5% are the
library's reading (`--override=eval.tta_shifts=0 --override=eval.tta_translate=0
--override=eval.tta_flip=false` for plain clips).

Paper's reported results (CMC rank-1 / 5 / 10 / 20; iLIDS-VID, PRID-2011, MARS):

  table III (architecture variants)                  iLIDS-VID              PRID-2011              MARS
  ""               Ours_G(5x5, 5x5)                  61.2/80.7/90.3/97.3    74.8/92.6/97.7/98.6    69.7/83.4/88.3/93.6
  k9_1             Ours_G(9x9, 1x1)                  56.1/76.7/86.1/93.5    68.1/89.2/94.5/96.1    63.4/79.2/82.5/89.0
  k1_9             Ours_G(1x1, 9x9)                  57.3/78.2/86.8/94.0    69.5/91.0/94.9/96.7    64.0/79.7/83.0/89.8
  vgg16            Ours_V(5x5, 5x5)                  56.7/77.0/87.5/92.5    65.2/88.0/89.0/93.5    60.5/78.4/82.0/89.0
  vgg16_k9_1       Ours_V(9x9, 1x1)                  54.5/73.8/83.7/90.0    63.0/85.0/86.5/92.5    57.6/74.8/80.7/86.2
  vgg16_k1_9       Ours_V(1x1, 9x9)                  55.1/75.0/85.0/91.5    63.7/85.8/88.0/93.0    57.8/75.6/81.5/87.2
  fc_gru_googlenet GoogLeNet + FC-GRU                53.8/73.2/83.0/89.4    62.6/83.0/85.0/91.2    56.0/72.7/79.1/84.0
  fc_gru_vgg16     VGG 16 + FC-GRU                   52.6/72.5/81.3/88.5    62.2/81.8/84.2/89.7    56.7/73.4/79.8/84.4
  no_attention     Ours_G(5x5, 5x5), m = 1/49        51.8/70.4/78.8/85.9    58.6/77.7/80.2/86.8    55.2/70.6/77.1/82.3
  table IV (pooling)
  max_pool         max pooling over time             59.4/58.6(sic)/83.8/90.4  72.4/90.8/96.0/96.2  66.8/81.1/86.7/91.2
  mean_pool        average pooling (section V-B's "average pooled"; no row of its own)
  (none)           Fisher vector pooling (eq. 10)    63.2/80.9/92.2/97.5    79.2/92.7/97.4/98.1    70.4/85.0/89.6/93.2
                   (evaluation only: tfreid.metric_learning --method=fisher_vector, above)

Every variant is a full configuration. The command of a row (VARIANT as in the first
column; "" is the plain `siamese_convgru`), per dataset:

    python -m tfreid.splits --experiment=siamese_convgru:VARIANT --data_dir=DATA/ilidsvid \
        --model_dir=runs/sc_VARIANT_ilidsvid        # iLIDS-VID, 10 splits
    python -m tfreid.splits --experiment=siamese_convgru:VARIANT --data_dir=DATA/prid2011 \
        --model_dir=runs/sc_VARIANT_prid2011        # PRID-2011, 10 splits
    python -m tfreid.train --experiment=siamese_convgru:VARIANT --data_dir=DATA/mars \
        --override=trainer.epochs=2000 --model_dir=runs/sc_VARIANT_mars   # MARS
    python -m tfreid.evaluate --model_dir=runs/sc_VARIANT_mars

The kernel rows follow table II: 3 x 3 into layer 1, then the named kernels for layers 2
and 3 (both input-to-state and state-to-state). Table VIII (trained on MARS, tested on
iLIDS-VID / PRID-2011, rank-1/10/20 49.2/87.6/92.1 / 61.4/91.2/94.7): train
`siamese_convgru:mars`, then
`python -m tfreid.evaluate --model_dir=runs/sc_mars --data_dir=DATA/prid2011 --split=all`.

Variants:
  ""         the paper's configuration (iLIDS-VID; also the `ilidsvid` variant).
  ilidsvid, prid2011   1000 epochs, 10-split protocol via tfreid.splits.
  mars       2000 epochs, MARS (torchreid protocol; `--protocol=mars_matlab` on evaluation).
  k9_1, k1_9, vgg16, vgg16_k9_1, vgg16_k1_9, fc_gru_googlenet, fc_gru_vgg16, no_attention,
  max_pool, mean_pool   the ablations above, on iLIDS-VID's recipe.
  synthetic  GoogLeNet at 1/8 width from scratch on 128 x 64 frames (a 4 x 2 cube), ConvGRU
             16/32/32 with Glorot-uniform kernels (U[-1, 1] saturates these narrow layers:
             synthetic_config), 8-frame clips, 16 identities x 2, no dropout, 60 epochs of 4
             steps (240), without XLA (slower here: 3.1 s a step against 0.85 s), plain
             test clips (section V-B's 16 test-time conditions: 118 s of evaluation against
             23 s, rank-1 / mAP 4.2 / 7.7 against 2.1 / 6.9); about
             3.5 min of training on an idle 2-core CPU. Measured (easy preset, seed 0,
             torchreid protocol, 191 queries; tfreid.train then tfreid.evaluate): pair BCE
             0.69 -> 0.52-0.57 over the run; rank-1 2.1, rank-5 8.9, rank-10 15.7, rank-20
             27.2, mAP 6.9 with the learned distance 1 - s; rank-1 5.2, rank-5 16.8, rank-10
             29.3, rank-20 44.0, mAP 11.4 with eval.distance=euclidean; with Fisher vectors
             of the frame states (C = 16, D = 32, GMM on 4827 training frames, `--method=
             fisher_vector`) rank-1 6.8, rank-5 15.7, rank-10 29.3, rank-20 40.3, mAP 11.4
             (GMM seeds 1 and 2: rank-1 4.7, mAP 11.0 / 10.6; C = 1, 4, 32: mAP 8.8, 9.2,
             9.8; power_l2: rank-1 5.2, mAP 11.9). Before W_i started at
             0 (U[-1, 1] kernels, random W_i): rank-1 1.6, mAP 5.3, the pair loss at log 2.
             Still far below temporal_pooling:synthetic (CE + triplet on a BatchNorm ResNet):
             the pair loss gives one bit per pair, 32 pairs a step, to a CNN trained from
             scratch.
"""

from tfreid import config as cfg
from tfreid.losses import attention_penalty, balanced_pair_bce

VARIANTS = ("", "ilidsvid", "prid2011", "mars", "k9_1", "k1_9", "vgg16", "vgg16_k9_1",
            "vgg16_k1_9", "fc_gru_googlenet", "fc_gru_vgg16", "no_attention", "max_pool",
            "mean_pool", "synthetic")

GOOGLENET_WEIGHTS = "weights/googlenet_imagenet.npz"


def paper_config() -> cfg.ExperimentConfig:
  """Sections III-V of the paper, on iLIDS-VID."""
  c = cfg.ExperimentConfig()
  c.data.height, c.data.width = 224, 224
  c.data.seq_len = 20
  c.data.test_seq_len = 128
  c.data.train_sampler = "consecutive"
  c.data.sample_stride = 1
  c.data.tracklet_sampler = "cross_camera"
  c.data.test_sampler = "dense"
  c.data.num_identities, c.data.num_instances = 5, 2
  c.data.test_batch_size = 4
  # Section V-B: crop and mirror, plus a translation of up to 5% of height and width.
  c.data.augmentation = cfg.AugmentationConfig(crop_enlarge=0.0, flip=True, translate=0.05)
  c.model = cfg.ModelConfig(
      name="siamese_convgru",
      backbone=cfg.BackboneConfig(name="googlenet", init="imagenet",
                                  weights_path=GOOGLENET_WEIGHTS,
                                  nonlocal_blocks=cfg.NonLocalConfig(
                                      blocks_per_stage=[0, 0, 0, 0])))
  section = c.model.siamese_convgru
  section.feature = "conv"
  section.channels = [128, 256, 256]
  section.kernel_sizes = [3, 5, 5]
  section.pool = True
  section.spatial_attention = "learned"
  section.temporal_pooling = "attention"
  section.dropout = 0.7
  section.gru_bias = False
  c.losses = cfg.LossesConfig(
      pair_bce=balanced_pair_bce.Config(weight=1.0),
      attention_penalty=attention_penalty.Config(weight=1.0))
  c.optimizer = cfg.OptimizerConfig(name="rmsprop", learning_rate=1e-4, rho=0.9, momentum=0.0,
                                    weight_decay=0.0, clip_value=5.0)
  c.schedule = cfg.ScheduleConfig(name="constant")
  c.trainer.epochs = 1000
  c.trainer.eval_every_epochs = 0
  c.eval.protocol = "torchreid"
  c.eval.distance = "model"
  # Section V-B: query and gallery sequences shorter than 128 frames are augmented at test
  # time too, the similarity averaged over all augmentation conditions. The conditions are
  # not given: both mirror states x 8 diagonal shifts over +-5% of the frame (the training
  # translation's range; 8 shifts x 2 mirrors as in the test code of RCN, whose setting the
  # paper follows) are the library's reading.
  c.eval.tta_flip, c.eval.tta_shifts, c.eval.tta_translate = True, 8, 0.05
  c.eval.tta_max_length = 128
  return c


def synthetic_config(c: cfg.ExperimentConfig) -> cfg.ExperimentConfig:
  """Scaled down to train on a CPU in minutes on the built-in synthetic dataset."""
  c.data.data_dir = "runs/data/synthetic"
  c.data.height, c.data.width = 128, 64
  c.data.seq_len = 8
  c.data.test_seq_len = 8
  c.data.num_identities, c.data.num_instances = 8, 2
  c.data.test_batch_size = 32
  c.data.augmentation = cfg.AugmentationConfig(crop_enlarge=0.0, flip=True, translate=0.05)
  c.model.backbone.init = "none"
  c.model.backbone.weights_path = ""
  section = c.model.siamese_convgru
  section.backbone_width = 0.125
  section.channels = [16, 32, 32]
  # At this scale (h_bar of 32 values, a CNN trained from scratch without BatchNorm) the
  # paper's dropout 0.7, v = 1/32 and 10 pairs a step leave the pair logits near 0 for
  # hundreds of steps, and a constant RMSProp rate of 1e-3 collapses the features after
  # about 70 steps (measured): no dropout, v starting at 0.5, 32 pairs a step, 1e-3
  # decaying from epoch 10.
  section.dropout = 0.0
  section.similarity_init = 0.5
  # Glorot-uniform ConvGRU kernels instead of section V-B's U[-1, 1] (scale-down change,
  # measured on this configuration): with U[-1, 1] the three layers (fan-ins of 16-32
  # channels on 4 x 2, 2 x 1 and 1 x 1 maps) saturate their gates (a fifth of the update
  # gates and a third of the candidates beyond |4| and |2.5| before the nonlinearity) and
  # h_bar no longer tells the identities apart (pair AUC of the centred cosine 0.49 at
  # initialisation against 0.60 for the CNN features it reads); the stack cannot fit even one
  # fixed batch of 10 pairs in 150 steps (BCE 0.59), where one layer fits it (0.007).
  section.gru_init_range = 0.0
  c.data.num_identities = 16
  c.optimizer.learning_rate = 1e-3
  c.schedule = cfg.ScheduleConfig(name="exponential", decay_start_epoch=10, decay_epochs=50,
                                  decay_rate=0.01)
  c.trainer.epochs = 60
  # Library choice at this size: XLA makes the step slower on a CPU (benchmarks/
  # train_step.py, measured: 3136 ms with XLA, 854 ms without, 32 clips of 8 x 128 x 64).
  c.runtime.jit_compile = False
  c.trainer.checkpoint_every_steps = 100
  c.trainer.log_every_steps = 5
  c.trainer.image_summary_every_steps = 100
  # Plain test clips (scale-down change, kept so that the leaderboard's numbers stay this
  # variant's): every synthetic tracklet is shorter than 128 frames, and the paper's 16
  # test-time conditions took the evaluation from 23 s to 118 s (easy preset, seed 0;
  # rank-1 / mAP 2.1 / 6.9 -> 4.2 / 7.7).
  c.eval.tta_flip, c.eval.tta_shifts, c.eval.tta_translate = False, 0, 0.0
  return c


def get_config(variant: str = "") -> cfg.ExperimentConfig:
  c = paper_config()
  section = c.model.siamese_convgru
  if variant == "prid2011":
    pass  # the same recipe (section V-B); the dataset comes from --data_dir.
  elif variant == "mars":
    c.trainer.epochs = 2000
  elif variant in ("k9_1", "vgg16_k9_1"):
    section.kernel_sizes = [3, 9, 1]
  elif variant in ("k1_9", "vgg16_k1_9"):
    section.kernel_sizes = [3, 1, 9]
  elif variant in ("fc_gru_googlenet", "fc_gru_vgg16"):
    section.feature = "fc"
    section.kernel_sizes = [1, 1, 1]
    # One location: the spatial attention is the constant 1 and its penalty a constant.
    c.losses.attention_penalty.weight = 0.0
  elif variant == "no_attention":
    section.spatial_attention = "uniform"
    c.losses.attention_penalty.weight = 0.0
  elif variant == "max_pool":
    section.temporal_pooling = "max"
  elif variant == "mean_pool":
    section.temporal_pooling = "mean"
  elif variant == "synthetic":
    c = synthetic_config(c)
  if variant.startswith("vgg16") or variant == "fc_gru_vgg16":
    # VGG-16 ImageNet weights through keras.applications.
    c.model.backbone.name = "vgg16"
    c.model.backbone.weights_path = ""
  return c
