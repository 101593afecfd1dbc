"""Checks a run's config before anything is built or compiled.

Every error names the field, the bad value and what is allowed.
"""

import ml_collections

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
  for field in ("batch_size", "eval_batch_size", "log_every_steps", "eval_every_steps",
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
  _validate_view(config, "augment")
  _one_of(config, "augment.blur_on", BLUR_ON)
  overrides = {k: v for k, v in config.augment.view2.items() if v is not None}
  # The second view's policy: augment with the overrides, checked field by field.
  merged = ml_collections.ConfigDict(dict(config.augment.items(), **overrides))
  _validate_view(ml_collections.ConfigDict({"augment": {"view2": merged}}), "augment.view2")
  if config.augment.blur_on != "device":
    return
  # The train step blurs both views alike, after everything tf.data did.
  def blur_of(augment):
    return (True, augment.blur_prob, tuple(augment.blur_sigma_range)) if augment.blur else ()
  if blur_of(merged) != blur_of(config.augment):
    field = next(f for f in ("blur", "blur_prob", "blur_sigma_range") if f in overrides)
    _fail(f"augment.view2.{field}", overrides[field],
          "a per-view blur needs the blur in tf.data (augment.blur_on = 'data')")
  if config.augment.blur:
    for view, augment in (("augment", config.augment), ("augment.view2", merged)):
      for field in ("rotate_prob", "cutout_prob", "sobel_prob", "noise_prob"):
        if augment[field] > 0:
          _fail(f"{view}.{field}", augment[field],
                "the operators follow the blur, so with augment.blur it must run in tf.data "
                "(augment.blur_on = 'data')")


def _validate_view(config, view: str):
  """The per-view fields of config.<view> (augment or augment.view2 merged into it)."""
  for field in ("color_jitter_prob", "grayscale_prob", "blur_prob", "rotate_prob",
                "cutout_prob", "sobel_prob", "noise_prob"):
    _probability(config, f"{view}.{field}")
  _positive(config, f"{view}.color_strength", strict=False)
  lo, hi = _pair(config, f"{view}.area_range")
  if not 0.0 < lo <= hi <= 1.0:
    _fail(f"{view}.area_range", (lo, hi), "expected 0 < low <= high <= 1")
  lo, hi = _pair(config, f"{view}.aspect_ratio_range")
  if not 0.0 < lo <= hi:
    _fail(f"{view}.aspect_ratio_range", (lo, hi), "expected 0 < low <= high")
  lo, hi = _pair(config, f"{view}.blur_sigma_range")
  if not 0.0 < lo <= hi:
    _fail(f"{view}.blur_sigma_range", (lo, hi), "expected 0 < low <= high (pixels)")
  lo, hi = _pair(config, f"{view}.cutout_size_range")
  if not 0.0 < lo <= hi <= 1.0:
    _fail(f"{view}.cutout_size_range", (lo, hi),
          "expected 0 < low <= high <= 1 (the square's side / the image side)")
  lo, hi = _pair(config, f"{view}.noise_sigma_range")
  if not 0.0 <= lo <= hi:
    _fail(f"{view}.noise_sigma_range", (lo, hi), "expected 0 <= low <= high (on [0, 1] pixels)")
  _one_of(config, f"{view}.jitter_impl", JITTER_IMPLS)
