"""Defaults shared by every config; each config file states only what differs.

A config holds the groups its mode reads (simclr_jax/config_lib.py MODE_GROUPS):
`get_config()` is the pretraining base (it also carries the `knn` and `export` groups:
the kNN monitor, and `--config.mode=knn` / `export` on a pretraining config);
`linear_eval_config()` and `finetune_config()` are the evaluation bases, with the data
and program fields, the crop + flip view and their protocol group only (the network
comes from the pretraining checkpoint). Values follow the official SimCLR code / paper
(Chen et al., ICML 2020) unless noted.
"""

import ml_collections
from ml_collections import config_dict

# The fields of c.augment that augment.view2 can override for the second view.
VIEW2_FIELDS = ("crop", "area_range", "aspect_ratio_range", "flip", "color_jitter_prob",
                "color_strength", "jitter_impl", "color_random_order", "grayscale_prob",
                "blur", "blur_prob", "blur_sigma_range", "rotate_prob", "cutout_prob",
                "cutout_size_range", "sobel_prob", "noise_prob", "noise_sigma_range")

ConfigDict = ml_collections.ConfigDict


def get_config() -> ConfigDict:
  """The pretraining base."""
  c = _common("pretrain")
  c.batch_size = 512  # global, over all devices and processes
  c.num_epochs = 100.0  # any float: simclr_jax/steps.py
  c.num_train_steps = -1  # wins over num_epochs when > 0

  # --- augmentation (paper Sec. 3 and Appendix A) -----------------------------------
  c.augment = crop_flip()
  c.augment.color_jitter_prob = 0.8
  c.augment.color_strength = 0.5  # s; 1.0 ImageNet, 0.5 CIFAR-10 (official)
  # Brightness: "simclrv2" (official default) multiplies by a factor in
  # [max(0, 1 - 0.8 s), 1 + 0.8 s]; "simclrv1" (v1 paper) adds a delta in [-0.8 s, 0.8 s].
  c.augment.jitter_impl = "simclrv2"
  c.augment.color_random_order = True  # False: brightness, contrast, saturation, hue
  c.augment.grayscale_prob = 0.2
  c.augment.blur = False  # ImageNet only
  c.augment.blur_prob = 0.5
  c.augment.blur_sigma_range = (0.1, 2.0)
  c.augment.blur_kernel_fraction = 0.1  # kernel side / image side
  c.augment.blur_on = "device"  # "data" (tf.data) | "device" (inside the train step)
  # Figure 4's other operators, applied in tf.data after the blur in this order (all off;
  # with any on, a blur must run in tf.data: blur_on = "data"). See docs/augmentations.md.
  c.augment.rotate_prob = 0.0  # rotation by k x 90 degrees, k uniform in {1, 2, 3}
  c.augment.cutout_prob = 0.0  # a zero square of side U(cutout_size_range) x image side
  c.augment.cutout_size_range = (0.2, 0.5)
  c.augment.sobel_prob = 0.0  # Sobel gradient magnitude of the grayscale view
  c.augment.noise_prob = 0.0  # + N(0, sigma^2) per pixel, sigma ~ U(noise_sigma_range)
  c.augment.noise_sigma_range = (0.05, 0.2)  # on [0, 1] pixel values
  # The second view's policy: a non-None field overrides the field above for view 2 only
  # (Figure 5's asymmetric protocol: the studied operators on view 1, view 2 with crop,
  # flip, colour_jitter_prob, grayscale_prob, ... off; crop = False: the whole image
  # resized).
  c.augment.view2 = ml_collections.ConfigDict(
      {f: config_dict.placeholder(type(c.augment[f])) for f in VIEW2_FIELDS})

  # --- model ------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.depth = 18
  c.model.width_multiplier = 1.0
  c.model.cifar_stem = True
  c.model.sk_ratio = 0.0  # > 0: selective kernels + ResNet-D (SimCLR v2: 0.0625)
  c.model.se_ratio = 0.0  # > 0: squeeze-excitation blocks
  c.model.dtype = "float32"  # compute dtype; "bfloat16" keeps float32 parameters
  c.model.bn_momentum = 0.9
  c.model.bn_epsilon = 1e-5
  c.model.global_bn = True  # BN statistics over all devices (paper Sec. 2)
  c.model.head_mode = "nonlinear"  # none | linear | nonlinear
  c.model.head_num_layers = 2  # 2 = SimCLR v1 paper; 3 = SimCLR v2 and the official default
  c.model.proj_dim = 128
  c.model.online_probe = True  # linear classifier on stop_gradient(h)
  # The probe's input: 0 = h, j >= 1 = projection-head layer j (official ft_proj_selector).
  c.model.probe_from_projection_layer = 0

  # --- loss -------------------------------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.temperature = 0.5
  # True: the official objective, mean over N of (loss_a + loss_b) = 2 x the paper's L,
  # with which every published LR, weight decay and temperature was tuned (under LARS
  # not a mere rescaling). False: the paper's L (Eq. 1, mean over the 2N anchors).
  c.loss.official_scaling = True
  c.loss.hidden_norm = True  # official hidden_norm: L2-normalise z before the logits
  c.loss.chunks = 1  # >1: gradient-cache NT-Xent over chunks of the global batch

  # --- optimiser --------------------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "lars"  # lars | sgd | adamw
  c.optim.base_lr = 1.0
  c.optim.lr_scaling = "linear"  # linear: base x B/256; sqrt: base x sqrt(B); none
  c.optim.warmup_epochs = 10.0
  c.optim.schedule = "cosine"  # cosine | constant
  c.optim.weight_decay = 1e-4
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.trust_coefficient = 0.001

  # --- evaluations during pretraining (simclr_jax/evaluators/) -------------------------
  # One entry per evaluator: `type` (a key of evaluators.REGISTRY), `every_steps` (N > 0:
  # every N steps and at the last step; 0: at the last step only; -1: off) and its own
  # fields. Each runs after the checkpoint of the step it is due at.
  c.evals = ml_collections.ConfigDict()
  # Top-1/top-5 of the online probe (model.online_probe) on eval_split.
  c.evals.online_probe = ml_collections.ConfigDict(dict(type="online_probe",
                                                        every_steps=5000))
  # Weighted kNN on h (protocol: c.knn below): knn_top1 / knn_top5.
  c.evals.knn = ml_collections.ConfigDict(dict(type="knn", every_steps=-1))
  # Logistic-regression probes on frozen h, on all labels and on `shots` per class
  # (averaged over `draws` seeded draws); also on a randomly initialised encoder.
  c.evals.linear_probes = ml_collections.ConfigDict(dict(
      type="linear_probes", every_steps=-1, shots=5, draws=10, random_init_baseline=True))
  # Paper Table 3: which transformation (colour/grayscale, rotation, noise, Sobel) a
  # logistic regression on frozen h and on g(h) can tell (docs/evaluation.md).
  c.evals.transform_prediction = ml_collections.ConfigDict(dict(
      type="transform_prediction", every_steps=-1, max_images=2048, noise_sigma=0.1, seed=0,
      tasks="color,rotation,noise,sobel"))

  c.knn = knn()
  c.export = export()
  return c


def linear_eval_config() -> ConfigDict:
  """The `linear_eval` base: the official ImageNet protocol (Chen et al. 2020, Appendix
  B.6). Frozen encoder, linear classifier on h, crop + flip only."""
  c = _common("linear_eval")
  c.augment = crop_flip()
  c.linear_eval = ConfigDict()
  c.linear_eval.batch_size = 4096  # global; CIFAR-10: 512
  c.linear_eval.num_epochs = 90.0  # CIFAR-10: 100
  c.linear_eval.num_train_steps = -1  # wins over num_epochs when > 0
  # Also evaluate every N steps (0: only the final evaluation; -1 as 0).
  c.linear_eval.eval_every_steps = 5000
  # Fast path for sweeps: h of every train image extracted once (no augmentation), the
  # classifier trained on those; its metrics are named linear_eval_cached_*.
  c.linear_eval.cached_features = False
  # 0 = classifier on h; j >= 1 = on projection-head layer j (official ft_proj_selector).
  c.linear_eval.from_projection_layer = 0
  c.linear_eval.zero_init_head = True  # official zero_init_logits_layer; False: N(0, 0.01^2)
  c.linear_eval.optim = _supervised_optim(base_lr=0.1, weight_decay=1e-6)  # CIFAR-10: wd 0
  return c


def finetune_config() -> ConfigDict:
  """The `finetune` base: the official semi-supervised protocol (Appendix B.5): every
  layer trained with a fresh linear head, crop + flip only."""
  c = _common("finetune")
  c.augment = crop_flip()
  c.finetune = ConfigDict()
  c.finetune.batch_size = 4096
  c.finetune.num_epochs = 30.0  # paper: 60 on 1% of the labels, 30 on 10%
  c.finetune.num_train_steps = -1  # wins over num_epochs when > 0
  c.finetune.eval_every_steps = 5000  # as linear_eval.eval_every_steps
  # Class-balanced, seeded (c.seed) fraction of train_split's labels; 1.0 = all. ImageNet
  # uses the tfds subsets instead (dataset imagenet2012_subset/1pct or /10pct).
  c.finetune.label_fraction = 0.1
  # SimCLR v2: 0 = classifier on h; j >= 1 = on the output of projection-head layer j,
  # those j pretrained layers fine-tuned too (official ft_proj_selector; v2 uses 1).
  c.finetune.from_projection_layer = 0
  c.finetune.zero_init_head = False  # official zero_init_logits_layer; False: N(0, 0.01^2)
  # Official fine_tune_after_block: -1 = every layer trains; k in 0..4 = the stem and
  # block groups 1..k stay frozen (inference-mode BN, no update).
  c.finetune.fine_tune_after_block = -1
  c.finetune.optim = _supervised_optim(base_lr=0.05, weight_decay=0.0)
  return c


def crop_flip() -> ConfigDict:
  """The random resized crop and flip: every training view (pretraining, linear
  evaluation, fine-tuning) has them."""
  return ConfigDict(dict(
      crop=True, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3), flip=True))


def knn() -> ConfigDict:
  """Weighted kNN on L2-normalised h (instance-discrimination protocol, Wu et al. 2018)."""
  return ConfigDict(dict(
      k=200,  # neighbours that vote
      temperature=0.1,  # vote weight exp(cosine similarity / T)
      query_batch=256))  # queries scored per device call


def export() -> ConfigDict:
  return ConfigDict(dict(
      dir="",  # "" = <workdir>/export
      image_size=-1,  # input side of the exported functions; -1 = pretraining's
      # Lowering targets of the StableHLO in the jax.export artifact and the SavedModel.
      platforms=("cpu", "cuda", "tpu")))


def _common(mode: str) -> ConfigDict:
  """The data and program fields every mode reads."""
  c = ConfigDict()
  c.mode = mode  # pretrain | linear_eval | finetune | knn | export
  c.seed = 0

  # --- data -------------------------------------------------------------------------
  c.dataset = "cifar10"  # tfds name, "digits" (offline, in-package) or "folder:/path"
  c.data_dir = ""  # tfds data_dir; "" = tfds default (digits: <workdir>/tfds)
  c.train_split = "train"
  c.eval_split = "test"
  c.eval_batch_size = 512

  c.data = ConfigDict()
  c.data.image_size = 32  # output side of a view, px
  c.data.shuffle_buffer = 10_000
  c.data.cache = False  # cache decoded examples in memory (small datasets)
  c.data.deterministic = False  # reproducible order and augmentations given c.seed
  c.data.prefetch = 4  # batches
  c.data.num_parallel_calls = -1  # -1 = tf.data.AUTOTUNE
  # Multi-process input: "split" = each process reads a disjoint shard of the split;
  # "batch" = every process reads the same stream and keeps its rows of each global
  # batch (wasteful; global batches then equal a 1-process run's exactly).
  c.data.process_sharding = "split"

  # --- program ----------------------------------------------------------------------
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  # The pretraining checkpoint the evaluation modes (linear_eval | finetune | knn |
  # export) start from: a pretraining workdir, its checkpoints/ dir or one
  # checkpoints/<step> dir; "" = --workdir. They rebuild the network from the config
  # saved in it.
  c.init_from = ""
  return c


def _supervised_optim(*, base_lr: float, weight_decay: float) -> ConfigDict:
  """Official linear-eval / fine-tuning optimiser: Nesterov momentum 0.9, LR = base x
  B/256, no warm-up, cosine decay (same fields as pretraining's c.optim)."""
  return ConfigDict(dict(
      name="sgd", base_lr=base_lr, lr_scaling="linear", warmup_epochs=0.0,
      schedule="cosine", weight_decay=weight_decay, momentum=0.9, nesterov=True,
      trust_coefficient=0.001))
