"""Checks a run's config before anything is built or compiled.

Every error names the field, the bad value and what is allowed.
"""

import ml_collections

from simclr_jax import evaluators

MODES = ("pretrain", "linear_eval", "finetune", "knn", "export")
DEPTHS = (18, 34, 50, 101, 152, 200)
DTYPES = ("float32", "bfloat16")
HEAD_MODES = ("none", "linear", "nonlinear")
OPTIMIZERS = ("lars", "sgd", "adamw")
LR_SCALINGS = ("linear", "sqrt", "none")
SCHEDULES = ("cosine", "constant")
BLUR_ON = ("data", "device")
JITTER_IMPLS = ("simclrv1", "simclrv2")  # augment.JITTER_IMPLS (no TensorFlow import here)


class ConfigError(ValueError):
  """A config field holds a value the program cannot run with."""


def _fail(field: str, value, allowed: str):
  raise ConfigError(f"config.{field} = {value!r} is not allowed: {allowed}")


def _one_of(config, field: str, allowed):
  value = _get(config, field)
  if value not in allowed:
    _fail(field, value, f"expected one of {list(allowed)}")


def _positive(config, field: str, *, strict: bool = True):
  value = _get(config, field)
  if not isinstance(value, (int, float)) or value < 0 or (strict and value == 0):
    _fail(field, value, "expected a number > 0" if strict else "expected a number >= 0")


def _probability(config, field: str):
  value = _get(config, field)
  if not 0.0 <= value <= 1.0:
    _fail(field, value, "expected a probability in [0, 1]")


def _pair(config, field: str) -> tuple[float, float]:
  value = _get(config, field)
  if (not isinstance(value, (tuple, list)) or len(value) != 2
      or not all(isinstance(v, (int, float)) for v in value)):
    _fail(field, value, f"expected a pair (low, high), e.g. --config.{field}='(0.1, 0.9)'")
  return tuple(value)


def _get(config, field: str):
  for part in field.split("."):
    config = config[part]
  return config


def validate_mode(config: ml_collections.ConfigDict) -> None:
  _one_of(config, "mode", MODES)


def validate(config: ml_collections.ConfigDict, *, num_devices: int = 1,
             process_count: int = 1, min_image_size: int = 1) -> None:
  """Raises ConfigError for the first invalid field of `config`."""
  _one_of(config, "mode", MODES)
  for field in ("batch_size", "eval_batch_size", "log_every_steps",
                "checkpoint_every_steps", "keep_checkpoints", "data.image_size"):
    _positive(config, field)
    if int(_get(config, field)) != _get(config, field):
      _fail(field, _get(config, field), "expected an integer")
  for field in ("batch_size", "eval_batch_size"):
    if _get(config, field) % num_devices:
      _fail(field, _get(config, field),
            f"a global batch must be divisible by the device count ({num_devices})")
    if _get(config, field) % process_count:
      _fail(field, _get(config, field),
            f"a global batch must be divisible by the process count ({process_count})")
  if config.num_train_steps <= 0:
    _positive(config, "num_epochs")
  if config.data.image_size < min_image_size:
    _fail("data.image_size", config.data.image_size,
          f"the encoder needs images of at least {min_image_size} px "
          f"(model.cifar_stem={config.model.cifar_stem})")
  _validate_model(config)
  _validate_augment(config)
  _validate_evals(config)
  _positive(config, "loss.temperature")
  _positive(config, "loss.chunks")
  local_batch = config.batch_size // num_devices
  if local_batch % config.loss.chunks:
    _fail("loss.chunks", config.loss.chunks,
          f"must divide the per-device batch ({local_batch})")
  _one_of(config, "optim.name", OPTIMIZERS)
  _one_of(config, "optim.lr_scaling", LR_SCALINGS)
  _one_of(config, "optim.schedule", SCHEDULES)
  for field in ("optim.base_lr", "optim.weight_decay", "optim.warmup_epochs",
                "optim.momentum"):
    _positive(config, field, strict=False)


def _every_steps(config, field: str):
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, int) or value < -1:
    _fail(field, value, "expected an integer >= -1 (N > 0: every N steps and at the last "
                        "step; 0: at the last step only; -1: off)")


def _validate_evals(config):
  for name, entry in config.evals.items():
    if not isinstance(entry, ml_collections.ConfigDict) or "type" not in entry:
      _fail(f"evals.{name}", entry, "expected an entry ConfigDict(type=..., every_steps=...)")
    _one_of(config, f"evals.{name}.type", sorted(evaluators.REGISTRY))
    if "every_steps" not in entry:
      _fail(f"evals.{name}.every_steps", None, "expected an integer >= -1")
    _every_steps(config, f"evals.{name}.every_steps")
  for field in ("linear_eval.eval_every_steps", "finetune.eval_every_steps"):
    _every_steps(config, field)


def _validate_model(config):
  _one_of(config, "model.depth", DEPTHS)
  _positive(config, "model.width_multiplier")
  for field in ("model.sk_ratio", "model.se_ratio"):
    _positive(config, field, strict=False)
  if config.model.sk_ratio > 0 and config.model.depth in (18, 34):
    _fail("model.sk_ratio", config.model.sk_ratio,
          "selective kernels need a bottleneck depth (model.depth 50, 101, 152 or 200)")
  _one_of(config, "model.dtype", DTYPES)
  _one_of(config, "model.head_mode", HEAD_MODES)
  _positive(config, "model.head_num_layers")
  _positive(config, "model.proj_dim")
  layers = {"none": 0, "linear": 1}.get(config.model.head_mode, config.model.head_num_layers)
  _one_of(config, "model.probe_from_projection_layer", range(layers + 1))


def _validate_augment(config):
  for field in ("color_jitter_prob", "grayscale_prob", "blur_prob"):
    _probability(config, f"augment.{field}")
  _positive(config, "augment.color_strength", strict=False)
  lo, hi = _pair(config, "augment.area_range")
  if not 0.0 < lo <= hi <= 1.0:
    _fail("augment.area_range", (lo, hi), "expected 0 < low <= high <= 1")
  lo, hi = _pair(config, "augment.aspect_ratio_range")
  if not 0.0 < lo <= hi:
    _fail("augment.aspect_ratio_range", (lo, hi), "expected 0 < low <= high")
  lo, hi = _pair(config, "augment.blur_sigma_range")
  if not 0.0 < lo <= hi:
    _fail("augment.blur_sigma_range", (lo, hi), "expected 0 < low <= high (pixels)")
  _one_of(config, "augment.blur_on", BLUR_ON)
  _one_of(config, "augment.jitter_impl", JITTER_IMPLS)
