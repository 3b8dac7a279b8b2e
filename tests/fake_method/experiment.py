"""The test-only method's experiment: `--experiment=fake_method.experiment`."""

from tfreid import config as cfg
from tfreid.losses import cross_entropy, triplet

from fake_method import attention_entropy

VARIANTS = ("",)


def get_config(variant: str = "") -> cfg.ExperimentConfig:
  del variant
  c = cfg.ExperimentConfig()
  c.data.height, c.data.width, c.data.seq_len = 8, 6, 2
  c.data.num_identities, c.data.num_instances = 4, 2
  c.data.test_batch_size = 3
  c.data.augmentation = cfg.AugmentationConfig(crop_enlarge=0.25, flip=True)
  c.model.name = "fake_method.probe"
  c.model.probe.channels = 4
  c.losses = cfg.LossesConfig(
      cross_entropy=cross_entropy.Config(weight=1.0, label_smoothing=0.1),
      global_triplet=triplet.Config(weight=1.0, margin=0.3, feature="embedding"),
      local_triplet=triplet.Config(weight=0.5, margin=0.7, distance="parts"),
      attention_entropy=attention_entropy.Config(weight=0.01))
  c.optimizer.learning_rate = 0.01
  c.trainer.freeze = ["probe/frozen_proj*"]
  c.trainer.epochs = 1
  c.trainer.steps_per_epoch = 2
  c.trainer.log_every_steps = 1
  c.trainer.image_summary_every_steps = 0
  return c
