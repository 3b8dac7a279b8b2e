"""a3d: recurrent 3-D attention with a REINFORCE-trained Gaussian location policy (Chen et
al., "Learning Recurrent 3D Attention for Video-Based Person Re-identification", TIP 2020).

Command (MARS converted with optical flow, the paper's configuration):

    python -m data_pipelines.convert --dataset=mars --input_dir=MARS --output_dir=DATA/mars_flow \
        --optical_flow
    python -m tfreid.train --experiment=a3d --data_dir=DATA/mars_flow --model_dir=runs/a3d

Paper's configuration (section III, tables I-IV, section III-D): RGB and 2-channel optical
flow through their own ResNet-50 conv1 + res2, summed (eq. 1), a shared res3-res5 trunk with
res5 stride 1 (g: 6 x 16 x 8 x 2048 for 6 x 256 x 128 clips); a recurrent agent of T = 4
glimpses over 4 x 6 x 3 bins of g, Gaussian location policy of fixed variance 0.03 trained by
REINFORCE on the classification reward with a value baseline (eqs. 7-13); embedding
[f_g, h_1..h_4] (3072-d); cross-entropy without smoothing (eq. 15) + batch-all triplet with
squared distances, margin 0.3 (eq. 14) + REINFORCE, all weight 1, trained jointly (alg. 1).
6 consecutive frames per clip, random mirror and erasing (probability 0.5: library choice,
the paper gives none), no crop enlargement; ImageNet-initialised ResNet-50 (the flow conv1
by the cross-modality rule); Adam, lr 2e-4 halved every 60 epochs, no weight decay.
MARS: 800 epochs, batch 48 = 12 identities x 4 clips (2 GPUs: each replica mines triplets
in its own 24 clips); iLIDS-VID / PRID-2011: 500 epochs, 16 = 4 x 4, 1 GPU.
The test clips are 6 frames, dense and non-overlapping; features averaged per tracklet,
Euclidean distance; MARS under the torchreid protocol (the paper does not say which).

Paper's results (table VI): MARS rank-1 86.3, rank-5 95.5, mAP 80.4; iLIDS-VID rank-1 87.9,
rank-5 98.6; PRID-2011 rank-1 95.1, rank-5 99.5. Cross-dataset iLIDS-VID -> PRID-2011
(table X): rank-1/5/10/20 64.2 / 84.7 / 92.8 / 98.5 (`python -m tfreid.evaluate
--model_dir=runs/a3d_ilidsvid --data_dir=DATA/prid_flow --split=all`).

Variants (table VII: iLIDS-VID rank-1 / rank-5 / mAP; all on `ilidsvid`'s recipe):
  ""               MARS, the paper's configuration.
  ilidsvid         proposed, 87.9 / 98.6 / 92.5
                   `--experiment=a3d:ilidsvid --data_dir=DATA/ilidsvid_flow` (data.split=0..9
                   through `python -m tfreid.splits`).
  prid2011         the same recipe on PRID-2011 (178 identities with more than 27 frames).
  no_attention     w/o attention, 85.9 / 97.7 / 91.3 (`model.a3d.attention=none`: f_g only).
  random_attention random attention, 80.5 / 96.8 / 87.6 (`model.a3d.location_policy=uniform`:
                   bins drawn uniformly at train and test; no RL term).
  no_rnn           w/o RNN, 86.8 / 98.5 / 91.8 (`model.a3d.num_glimpses=1`: one glimpse at
                   the centre bin; its action chooses no bin, so
                   `losses.reinforce.include_final_action=false`: no RL).
  no_rl            w/o RL objective, 85.0 / 96.6 / 90.1 (`losses.reinforce.weight=0`: the
                   policy still samples around an untrained mean).
  no_flow          w/o optical flow, 84.8 / 96.8 / 88.7 (`model.a3d.use_flow=false`: clips
                   only, any dataset).
  qan              QAN*, 85.8 / 98.1 / 91.0 (`model.a3d.attention=qan`: the agent replaced by
                   a per-frame quality sigmoid(FC(frame mean of g)) and the quality-weighted
                   mean over frames; no RL term).
  separate_attention
                   separate attention*, 86.3 / 98.3 / 91.5 (`model.a3d.attention=separate`:
                   a per-frame spatial softmax of a 1 x 1 convolution of g, then QAN*'s
                   temporal quality pooling; no RL term). Both rows are only named in the
                   paper (section IV-C); the layers are the library's reading
                   (tfreid/layers/quality_pooling.py).
  glimpses1, glimpses2, glimpses4
                   table VIII (number of steps): 86.8 / 98.5 / 91.8, 87.4 / 98.3 / 92.2,
                   87.9 / 98.6 / 92.5 (`model.a3d.num_glimpses=N`).
  bin_t1 .. bin_t6 fig. 5: bins of temporal length 1..6 and spatial size 6 x 3
                   (`model.a3d.bin_size=[L,6,3]`; bin_t4 is the proposed 4 x 6 x 3). The
                   figure is a plot: "generally robust", longer bins lower (no numbers).
  bin_h{2,4,6,8}w{1,2,3,4}
                   fig. 6: spatial size H_a x W_a at temporal length 4
                   (`model.a3d.bin_size=[4,H,W]`); the plot shows above 87 % rank-1 "except
                   for too small attention regions"; the sizes it plots are not in the text,
                   so this grid (up to half the 16 x 8 map) is the library's.
  synthetic        narrow network at 64 x 32, 4-frame clips (g: 4 x 4 x 2, bins 2 x 2 x 1) on
                   the built-in synthetic dataset converted with --optical_flow, 540 steps
                   without XLA (`make quickstart EXPERIMENT=a3d:synthetic`).

Synthetic figures (easy preset, 540 steps; 417 s train + evaluation without XLA on the shared
2-core machine; rank-1 / mAP, `python -m tfreid.train
--experiment=a3d:synthetic --model_dir=RUN [--override=runtime.seed=S]` then
`python -m tfreid.evaluate --model_dir=RUN`):

  | run | seed 0 | seed 1 |
  | --- | --- | --- |
  | a3d:synthetic (policy gradient on the agent only, the default) | 16.2 / 31.1 | 19.9 / 29.6 |
  | the same, `model.a3d.attention=none losses.reinforce=null` | 25.7 / 37.5 | 18.8 / 30.9 |
  | policy gradient into the backbones, the earlier default (`policy_gradient_scope=all`) | 14.1 / 27.1 (earlier code: a_T left out) | 15.2 / 27.6 |
  | earlier code, `policy_gradient_scope=location_head` | 20.9 / 31.0 | - |

On this grid (g: 4 x 4 x 2, bins 2 x 2 x 1, 3 x 3 x 2 corners) an action moves the bin along
L or H only when |a| > 0.5: from a zero mean the policy's std of 0.17 gets there in 0.4 % of
draws, but the means drift (seed 0 at step 540: |mu_L| 0.29), and glimpses 2-4 then leave the
centre in 15 % (L), 4 % (H) and 20 % (W) of the training draws. At test time (the mean
action, as the paper does) the path is one or two fixed patterns, whatever the clip: seed 0 keeps
all four glimpses on the centre bin in 838 of 851 query clips, seed 2 moves glimpses 2-4 to
the other W column in all 851. The local features h_t have 1/6 to 1/10 of f_g's norm:
retrieval on f_g alone equals that on the embedding (easy seeds 0/1/2: 19.4 / 29.7,
17.3 / 27.1, 9.9 / 20.5 against 17.3 / 30.0, 18.3 / 27.7, 9.4 / 20.5), on h alone it is near
chance (5.2 / 9.2, 5.8 / 10.3, 3.7 / 11.0).

Why a3d:synthetic ranks below temporal_pooling:synthetic (leaderboard, easy: 15.0 / 26.1 mean
of 3 seeds against 37.7 / 48.5), seed 0, 540 steps, rank-1 / mAP:

  | run | easy seed 0 | training CE, last 10 % of steps |
  | --- | --- | --- |
  | a3d:synthetic | 17.3 / 30.0 | 3.82 |
  | `attention=none losses.reinforce=null` (with XLA) | 25.7 / 37.5 | 3.23 |
  | the same, `use_flow=false` (one RGB stream) | 23.6 / 34.4 | 2.96 |
  | the same, `data.augmentation.random_erasing=0` | 36.6 / 46.9 | 1.18 |
  | temporal_pooling:synthetic (seeds 0/1/2) | 39.8 / 50.4, 34.6 / 46.8, 38.7 / 48.2 | 2.66 (eps 0.1) |

The RGB stream + trunk is temporal_pooling's ResNet to the parameter (153,720; the flow
stream adds 2,288), and dropping the flow stream changes little (-2.1 rank-1, one seed). The
recipe's random erasing (p = 0.5, the only synthetic preset that erases) costs 13 rank-1
points: it erases up to 40 % of all frames of a clip at once, and the CE still at 2.96 after
60 epochs (1.18 without) says the network cannot fit the erased clips in this budget; without
it the one-stream f_g model ties the baseline. The agent costs another 6-8 points: f_g itself
is worse (19.4 against 23.6-25.7), the supervised gradient reaches g through the agent
(a third of the f_g path's norm, on the 4 of 32 cells of the centre bin) while the agent's
F_o and F_h move mostly by the policy gradient (its gradient norm on them is 5.3 times the
supervised one, seed 0's checkpoint).

Options without a table row: `--override=model.a3d.num_episodes=M` samples M episodes of the
agent per clip (eq. 12's M; the paper does not give it, the default is 1);
`--override=model.a3d.policy_gradient_scope=all` lets the REINFORCE gradient reach the
backbones (default `agent`: eq. 9's theta, the agent's layers only), `location_head` keeps it
to fc_att.
"""

from experiments import nonlocal_i3d
from tfreid import config as cfg
from tfreid.losses import cross_entropy, reinforce, triplet

FIG5_TEMPORAL_LENGTHS = (1, 2, 3, 4, 5, 6)
FIG6_HEIGHTS, FIG6_WIDTHS = (2, 4, 6, 8), (1, 2, 3, 4)
BIN_VARIANTS = {**{f"bin_t{t}": [t, 6, 3] for t in FIG5_TEMPORAL_LENGTHS},
                **{f"bin_h{h}w{w}": [4, h, w] for h in FIG6_HEIGHTS for w in FIG6_WIDTHS}}
VARIANTS = ("", "ilidsvid", "prid2011", "no_attention", "random_attention", "no_rnn",
            "no_rl", "no_flow", "qan", "separate_attention", "glimpses1", "glimpses2",
            "glimpses4") + tuple(BIN_VARIANTS) + ("synthetic",)


def paper_config() -> cfg.ExperimentConfig:
  """Section III-D on MARS."""
  c = cfg.ExperimentConfig()
  c.data.height, c.data.width, c.data.seq_len = 256, 128, 6
  c.data.train_sampler = "consecutive"
  c.data.sample_stride = 1
  c.data.test_sampler = "dense"
  c.data.num_identities, c.data.num_instances = 12, 4
  c.data.augmentation = cfg.AugmentationConfig(crop_enlarge=0.0, flip=True,
                                               random_erasing=0.5)
  c.model = cfg.ModelConfig(
      name="a3d",
      backbone=cfg.BackboneConfig(name="resnet2d", block_counts=[3, 4, 6, 3], base_width=64,
                                  last_stride=1, init="imagenet",
                                  nonlocal_blocks=cfg.NonLocalConfig(
                                      blocks_per_stage=[0, 0, 0, 0])))
  section = c.model.a3d
  section.attention = "recurrent"
  section.num_glimpses = 4
  section.bin_size = [4, 6, 3]
  section.policy_variance = 0.03
  section.hidden_dim, section.feature_dim = 256, 128
  c.losses = cfg.LossesConfig(
      cross_entropy=cross_entropy.Config(weight=1.0, label_smoothing=0.0),
      triplet=triplet.Config(weight=1.0, margin=0.3, mining="batch_all"),
      reinforce=reinforce.Config(weight=1.0, value_weight=1.0, discount=1.0))
  c.optimizer = cfg.OptimizerConfig(name="adam", learning_rate=2e-4, weight_decay=0.0)
  c.schedule = cfg.ScheduleConfig(name="step", step_epochs=60, step_factor=0.5)
  c.trainer.epochs = 800
  c.trainer.eval_every_epochs = 100
  c.eval.protocol = "torchreid"
  return c


def small_dataset_config(c: cfg.ExperimentConfig) -> cfg.ExperimentConfig:
  """iLIDS-VID / PRID-2011 (section III-D): 500 epochs, batch 16 = 4 x 4, one GPU."""
  c.data.num_identities, c.data.num_instances = 4, 4
  c.trainer.epochs = 500
  c.trainer.eval_every_epochs = 0
  return c


def synthetic_config(c: cfg.ExperimentConfig) -> cfg.ExperimentConfig:
  """Scaled down to train on a CPU in minutes; the same structure as the paper's."""
  c = nonlocal_i3d.synthetic_config(c)
  c.data.data_dir = "runs/data/synthetic_easy_optical_flow"
  c.data.augmentation = cfg.AugmentationConfig(crop_enlarge=0.0, flip=True,
                                               random_erasing=0.5)
  c.model.backbone.nonlocal_blocks.blocks_per_stage = [0, 0, 0, 0]
  c.model.backbone.last_stride = 1
  c.model.a3d.bin_size = [2, 2, 1]
  c.model.a3d.hidden_dim, c.model.a3d.feature_dim = 64, 32
  c.optimizer.weight_decay = 0.0
  # Without XLA: on a 2-core CPU a step takes 329 ms against 740 ms compiled
  # (benchmarks/train_step.py --experiment=a3d:synthetic).
  c.runtime.jit_compile = False
  return c


def get_config(variant: str = "") -> cfg.ExperimentConfig:
  if variant not in VARIANTS:
    raise cfg.ConfigError(f"a3d has no variant {variant!r}; variants: "
                          f"{', '.join(v or '(paper)' for v in VARIANTS)}.")
  c = paper_config()
  if variant == "synthetic":
    return synthetic_config(c)
  if variant:
    c = small_dataset_config(c)
  section = c.model.a3d
  if variant == "no_attention":
    section.attention = "none"
    del c.losses.reinforce
  elif variant == "random_attention":
    section.location_policy = "uniform"
    del c.losses.reinforce
  elif variant in ("no_rnn", "glimpses1"):
    section.num_glimpses = 1
    # The one action chooses no bin: no policy-gradient term (the value head still fits R).
    c.losses.reinforce.include_final_action = False
  elif variant == "glimpses2":
    section.num_glimpses = 2
  elif variant == "no_rl":
    c.losses.reinforce.weight = 0.0
  elif variant == "no_flow":
    section.use_flow = False
  elif variant in ("qan", "separate_attention"):
    section.attention = "qan" if variant == "qan" else "separate"
    del c.losses.reinforce
  elif variant in BIN_VARIANTS:
    section.bin_size = list(BIN_VARIANTS[variant])
  return c
