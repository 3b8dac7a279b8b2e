"""diversity_attention: diversity regularised spatiotemporal attention (Li, Bak, Carr, Wang,
"Diversity Regularized Spatiotemporal Attention for Video-based Person Re-identification",
CVPR 2018).

Command (MARS, the paper's model, the last row of table 1):

    python -m tfreid.train --experiment=diversity_attention --data_dir=DATA/mars --model_dir=runs/drsa

Run alone it trains the whole network from ImageNet weights in one stage. The paper trains
in stages (section 4.2); each stage is a variant that starts from the previous stage's run
(`trainer.init_checkpoint`; variables of another shape, such as the embedding FC after the
baseline, keep their initialisation) with the backbone frozen or not (`trainer.freeze`):

    T="python -m tfreid.train --data_dir=DATA/mars"
    $T --experiment=diversity_attention:baseline --model_dir=runs/drsa_baseline && \\
    $T --experiment=diversity_attention:spatial --model_dir=runs/drsa_spatial \\
       --override=trainer.init_checkpoint=runs/drsa_baseline && \\
    $T --experiment=diversity_attention:temporal --model_dir=runs/drsa_temporal \\
       --override=trainer.init_checkpoint=runs/drsa_spatial && \\
    $T --experiment=diversity_attention --model_dir=runs/drsa \\
       --override=trainer.init_checkpoint=runs/drsa_temporal

  (b) baseline  ResNet-50 + average pooling over space and time + FC 128 + L2, OIM, whole
                network trained ("Baseline");
  (c) spatial   backbone frozen; K = 6 spatial attention models with the diversity term,
                enhancement, average temporal pooling ("SpaAtn+Q");
  (d) temporal  backbone frozen; per-part temporal attention ("SpaAtn+Q+TemAtn");
  (e) ""        everything trained, per dataset ("SpaAtn+Q+TemAtn+Ind").

Paper's configuration (section 4.2): N = 6 chunks by restricted random sampling (section 3.1;
at test the first frame of each chunk, one clip per tracklet: `data.train_sampler=
restricted_random`, `data.test_sampler=chunk_first`); 256 x 128 frames; ResNet-50 conv1 to
res5c (8 x 4 x 2048); K = 6, d = 256; embedding 128, L2-normalised; OIM loss; batched SGD,
learning rate 0.1 then 0.01.

Library choices (the paper does not give them):
- OIM scale 30 (1/temperature) and momentum 0.5 (open-reid's defaults for OIM); the lookup
  table is checkpointed with the run and carried from stage to stage: `trainer.init_checkpoint`
  restores it when the source run trained on the same data_dir and split (its config.yaml)
  with as many identities. Fine-tuning on another dataset (ilidsvid, prid2011 from a MARS
  run) starts from a zero table, with a warning in the log.
- Diversity weight 1 (the paper: "multiplied by a coefficient").
- PK batches of 16 identities x 2 tracklets = 32 clips; clip-consistent flip and random crop
  from frames enlarged by 1/8.
- SGD momentum 0.9, Nesterov, weight decay 5e-4; the learning rate drops by 10 at 80 % of
  each stage (`schedule.name=step`); 100 epochs for the baseline, 50 for each later stage
  (an epoch visits every training identity once); the last stage (and the iLIDS-VID,
  PRID-2011 fine-tuning) starts at 0.01, since it fine-tunes a trained network.
- The backbone starts from ImageNet weights (`model.backbone.init=imagenet`: keras
  applications, or a local `weights_path`). The paper pre-trains it with OIM on six image
  ReID datasets (stage a), out of scope here: `--override=model.backbone.init=reid
  --override=model.backbone.weights_path=FILE` starts from such a network.
- Stages (b)-(d) are trained on one dataset (`--data_dir`); the paper trains them jointly on
  the PRID2011, iLIDS-VID and MARS training sets.
- Evaluation: both MARS protocols (the paper predates torchreid; `--protocol=mars_matlab`).

Paper's reported results, rank-1 PRID2011 / iLIDS-VID / MARS (MARS mAP), and the command of
each row on MARS (T as above; I = --override=trainer.init_checkpoint=; the OIM table, as well
as the model, carries over along each chain):
  table 1 (component analysis):
    Baseline             82.7 / 61.2 / 73.4 (58.1)
        $T --experiment=diversity_attention:baseline --model_dir=runs/drsa_baseline
    SpaAtn               84.2 / 64.9 / 74.5 (59.3)
        $T --experiment=diversity_attention:spatial_noreg --model_dir=runs/drsa_spatial_noreg
           $I=runs/drsa_baseline
    SpaAtn+Q' (eq. 10)   86.5 / 64.5 / 74.0 (58.2)
        $T --experiment=diversity_attention:spatial_lin --model_dir=runs/drsa_spatial_lin
           $I=runs/drsa_baseline
    SpaAtn+Q (eq. 9)     86.7 / 68.6 / 77.0 (60.9)
        $T --experiment=diversity_attention:spatial --model_dir=runs/drsa_spatial
           $I=runs/drsa_baseline
    SpaAtn+Q+MaxPool     86.9 / 68.2 / 76.8 (60.5)
        $T --experiment=diversity_attention:maxpool --model_dir=runs/drsa_maxpool
           $I=runs/drsa_spatial
    SpaAtn+Q+TemAtn      88.4 / 69.7 / 77.1 (61.2)
        $T --experiment=diversity_attention:temporal --model_dir=runs/drsa_temporal
           $I=runs/drsa_spatial
    SpaAtn+Q+TemAtn+Ind  93.2 / 80.2 / 82.3 (65.8)
        MARS:      $T --experiment=diversity_attention --model_dir=runs/drsa
                      $I=runs/drsa_temporal
        iLIDS-VID: python -m tfreid.splits --experiment=diversity_attention:ilidsvid
                      --data_dir=DATA/ilidsvid --model_dir=runs/drsa_ilidsvid $I=runs/drsa_temporal
        PRID2011:  the same with :prid2011, DATA/prid2011, runs/drsa_prid2011
  table 2 (K spatial attention models, the temporal stage, before Ind; rank-1 only):
    K = 1  86.2 / 64.7 / 76.0   k1
    K = 2  83.4 / 64.6 / 75.7   k2
    K = 4  86.9 / 64.6 / 77.2   k4
    K = 6  88.4 / 69.7 / 77.1   temporal (table 1's SpaAtn+Q+TemAtn row)
    K = 8  88.0 / 66.9 / 76.7   k8
  A K row's chain has a spatial stage with the same K (K = 4 shown; the attention layers of a
  run with another K have other shapes and would not be restored):
        $T --experiment=diversity_attention:spatial --model_dir=runs/drsa_spatial_k4
           --override=model.diversity_attention.num_parts=4 $I=runs/drsa_baseline
        $T --experiment=diversity_attention:k4 --model_dir=runs/drsa_k4 $I=runs/drsa_spatial_k4
  The paper trains stages (b)-(d) jointly on the three datasets and reports each row on each;
  here every chain runs on one --data_dir (DATA/ilidsvid or DATA/prid2011 instead of
  DATA/mars gives their single-split rows, split 0; tfreid.splits runs all 10 splits).

Variants:
  ""            stage (e), the paper's model: everything trained, from the `temporal` run.
  baseline, spatial_noreg, spatial_lin, spatial, maxpool, temporal
                the table 1 rows above; spatial* start from the baseline run, maxpool and
                temporal from the spatial run (each with --override=trainer.init_checkpoint=;
                without it they stop with that instruction, since their backbone is frozen).
  k1, k2, k4, k8
                table 2: the temporal stage with K attention models.
  ilidsvid, prid2011
                stage (e) on the 10-split datasets, from a MARS `temporal` run:
                python -m tfreid.splits --experiment=diversity_attention:ilidsvid
                  --data_dir=DATA/ilidsvid --model_dir=runs/drsa_ilidsvid
                  --override=trainer.init_checkpoint=runs/drsa_temporal
  synthetic     the whole model at 128 x 64 (a 4 x 2 grid), a narrow backbone, K = 4,
                N = 4, trained in one stage from scratch with Adam, without XLA, on the
                built-in synthetic dataset (make quickstart
                EXPERIMENT=diversity_attention:synthetic). Measured (easy preset, 450 steps,
                about 3 minutes of training on a loaded 2-core CPU; rank-1 / rank-5 / mAP,
                torchreid protocol, 191 queries; mars_matlab rank-1 / mAP in brackets):
                  seed 0  28.8 / 64.4 / 41.8   (36.1 / 33.5)
                  seed 1  22.5 / 53.4 / 33.1   (24.6 / 25.0)
                  seed 2   5.8 / 25.1 / 14.2   ( 6.3 /  9.0)
                  mean    19.0 / 47.6 / 29.7   (sample std: rank-1 11.9, mAP 14.1)
                occluded preset, same recipe: 13.1 / 19.7, 4.7 / 12.7, 2.1 / 7.6 (seeds 0-2).
                The low seeds stopped too early, on a camera shortcut; no numerical fault
                (every logged loss finite; train- and test-mode BatchNorm give embeddings
                of cosine 0.98 to 0.99) and no equation found wrong. Each training identity
                is filmed by 2 or 3 of the 6 cameras, so a feature that knows only the
                camera brings OIM from ln 75 = 4.32 to about 3.45 (the mean over training
                tracklets of ln(identities seen by their camera)). Every run spends its
                first 200 steps above that level (OIM 3.7-4.2 over steps 120-200); when it
                goes below depends on the seed (OIM over steps 200-300 / 300-360: seed 0
                3.24 / 2.38, seed 1 3.11 / 2.47, seed 2 3.54 / 3.57), and the learning rate
                drops by 10 at step 360. Seed 2 leaves it only then (2.57 over steps
                360-400, 2.47 over 400-450) and tests as a camera feature: its nearest
                gallery tracklet comes from the query's own camera for 72 % of the queries
                (occluded preset: seed 2 70 %, seed 1 48 %), against 32 to 38 % for the
                three runs above 13 rank-1 and a base rate of 16 %. Trained for 900 steps
                instead (the first 360 identical, the drop at step 720), seed 2 reaches
                40.3 / 75.9 / 52.7 with 30 % same-camera matches (OIM 0.40 over steps
                800-900).
                The attention lengthens the plateau: the diversity term (weight 1 from the
                first step) fixes every head on a cell within about 35 steps (seed 2: Q 5.8
                at step 5, 0.002 at step 35; the `spatial_attention_peak` scalar 0.92 at
                step 30, 0.93-0.97 at the end of every run) while OIM is still at or above
                chance (4.5-4.8 over steps 20-60 in every run), so the cells are chosen
                before any identity signal exists. In all six runs (and the 900-step one)
                two of the four heads sit on the two cells of the top row (hair and
                background) on nearly every frame (seed 2: peak 1.00, logit gap 9 to 11);
                alone they give 0.0 rank-1 with 83 % same-camera top matches (seed 2).
                Same seed 2, 450 steps: with the diversity weight 0, 17.8 / 28.0 (OIM 3.71
                over steps 120-200, 38 % same-camera); without attention (num_parts=0,
                temporal=average), 29.3 / 41.8 (OIM 2.69 over steps 120-200). The paper
                trains the attention on a trained, frozen backbone (section 4.2, stage c):
                the attention stage of seed 2 from that no-attention run (backbone frozen,
                180 steps, the rest as in `synthetic`) reached 28.3 / 63.9 / 39.1 with 31 %
                same-camera matches.
"""

from tfreid import config as cfg
from tfreid.losses import diversity, oim

VARIANTS = ("", "baseline", "spatial_noreg", "spatial_lin", "spatial", "maxpool", "temporal",
            "k1", "k2", "k4", "k8", "ilidsvid", "prid2011", "synthetic")

# trainer.freeze pattern of the backbone (stages c and d): the ResNet-50 (freezing it freezes
# every layer in it; its BatchNorm layers then run in inference mode).
FROZEN_BACKBONE = ["resnet2d"]


def _stage_schedule(c: cfg.ExperimentConfig, epochs: int, learning_rate: float) -> None:
  """SGD at `learning_rate`, divided by 10 at 80 % of `epochs` (library choice)."""
  c.trainer.epochs = epochs
  c.optimizer.learning_rate = learning_rate
  c.schedule = cfg.ScheduleConfig(name="step", step_epochs=max(int(0.8 * epochs), 1),
                                  step_factor=0.1)


def paper_config() -> cfg.ExperimentConfig:
  """Section 4.2 on MARS: the full model (K = 6, enhancement, temporal attention), every
  layer trained (stage e)."""
  c = cfg.ExperimentConfig()
  c.data.height, c.data.width, c.data.seq_len = 256, 128, 6
  c.data.train_sampler = "restricted_random"
  c.data.test_sampler = "chunk_first"
  c.data.num_identities, c.data.num_instances = 16, 2
  c.data.augmentation = cfg.AugmentationConfig(crop_enlarge=0.125, flip=True)
  c.model = cfg.ModelConfig(
      name="diversity_attention",
      backbone=cfg.BackboneConfig(
          name="resnet2d", block_counts=[3, 4, 6, 3], base_width=64, last_stride=2,
          init="imagenet", nonlocal_blocks=cfg.NonLocalConfig(blocks_per_stage=[0, 0, 0, 0])))
  section = c.model.diversity_attention
  section.num_parts, section.hidden_dim, section.embedding_dim = 6, 256, 128
  section.temporal, section.enhancement = "attention", True
  c.losses = cfg.LossesConfig(
      oim=oim.Config(weight=1.0, scale=30.0, momentum=0.5, feature="embedding"),
      diversity=diversity.Config(weight=1.0, variant="hellinger",
                                 output="attention_spatial"))
  c.optimizer = cfg.OptimizerConfig(name="sgd", learning_rate=0.01, momentum=0.9,
                                    nesterov=True, weight_decay=5e-4, weight_decay_mode="l2")
  _stage_schedule(c, 50, 0.01)
  c.trainer.eval_every_epochs = 10
  c.eval.protocol = "torchreid"
  return c


def _baseline(c: cfg.ExperimentConfig) -> cfg.ExperimentConfig:
  """Stage (b), table 1 "Baseline": no attention, average over space and time."""
  c.model.diversity_attention.num_parts = 0
  c.model.diversity_attention.temporal = "average"
  c.losses.diversity.weight = 0.0
  _stage_schedule(c, 100, 0.1)
  return c


def _frozen_stage(c: cfg.ExperimentConfig, temporal: str) -> cfg.ExperimentConfig:
  """Stages (c) and (d): the CNN fixed, the rest trained."""
  c.model.diversity_attention.temporal = temporal
  c.model.backbone.init = "none"  # the backbone comes from trainer.init_checkpoint
  c.trainer.freeze = list(FROZEN_BACKBONE)
  c.model.diversity_attention.requires_init_checkpoint = True
  _stage_schedule(c, 50, 0.1)
  return c


def synthetic_config(c: cfg.ExperimentConfig) -> cfg.ExperimentConfig:
  """The whole model, scaled down to train on a CPU in minutes, in one stage from scratch."""
  c.data.data_dir = "runs/data/synthetic"
  c.data.height, c.data.width, c.data.seq_len = 128, 64, 4
  c.data.num_identities, c.data.num_instances = 8, 2
  c.data.test_batch_size = 32
  c.model.backbone.block_counts = [1, 2, 2, 1]
  c.model.backbone.base_width = 8
  c.model.backbone.init = "none"
  section = c.model.diversity_attention
  section.num_parts, section.hidden_dim, section.embedding_dim = 4, 32, 64
  # Phi over D = 256 features of a network trained from scratch: softened (library choice).
  section.enhancement_scale = 1.0 / 16
  c.trainer.freeze = []
  # Adam (library choice): the paper's SGD at 0.05 barely moved a network trained from
  # scratch in 450 steps (easy preset, seed 0: rank-1 3.1, mAP 10.5), Adam at 1e-3 reached
  # rank-1 32.5, mAP 44.2.
  c.optimizer = cfg.OptimizerConfig(name="adam", learning_rate=1e-3, weight_decay=5e-4,
                                    weight_decay_mode="l2")
  _stage_schedule(c, 50, 1e-3)
  # Without XLA (library choice): on a 2-core CPU the compiled step of this small model was
  # slower (benchmarks/train_step.py, default batch: 734 ms with XLA, 269 ms without).
  c.runtime.jit_compile = False
  c.trainer.checkpoint_every_steps = 100
  c.trainer.log_every_steps = 5
  c.trainer.image_summary_every_steps = 100
  c.trainer.eval_every_epochs = 0
  return c


def get_config(variant: str = "") -> cfg.ExperimentConfig:
  c = paper_config()
  section = c.model.diversity_attention
  if variant == "baseline":
    c = _baseline(c)
  elif variant in ("spatial", "spatial_noreg", "spatial_lin"):
    c = _frozen_stage(c, "average")
    if variant == "spatial_noreg":
      c.losses.diversity.weight = 0.0
    elif variant == "spatial_lin":
      c.losses.diversity.variant = "lin"
  elif variant == "maxpool":
    c = _frozen_stage(c, "max")
  elif variant in ("temporal", "k1", "k2", "k4", "k8"):
    c = _frozen_stage(c, "attention")
    if variant != "temporal":
      section.num_parts = int(variant[1:])
  elif variant in ("", "ilidsvid", "prid2011"):
    if variant:
      # Fine-tuned per split from a MARS run (trainer.init_checkpoint); closed-set 10-split
      # protocol (tfreid.splits).
      c.model.backbone.init = "none"
      section.requires_init_checkpoint = True
  elif variant == "synthetic":
    c = synthetic_config(c)
  return c
