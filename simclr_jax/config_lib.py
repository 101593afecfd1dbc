"""Checks a run's config before anything is built or compiled, every mode's in one place.

Each mode's config holds only the groups the mode uses (`MODE_GROUPS`); `validate`
checks those. The allowed values of choice fields come from `simclr_jax.choices`, the
tuples the implementing modules use. Imports neither JAX nor TensorFlow, so that a
mistake fails in about a second. Every error names the field, the bad value and what is
allowed.
"""

import ml_collections

from simclr_jax import choices
from simclr_jax import evaluators

# The groups each mode reads, besides the data and program fields every config has
# (configs/base.py).
MODE_GROUPS = {
    "pretrain": ("model", "augment", "loss", "optim"),
    "linear_eval": ("linear_eval", "augment"),
    "finetune": ("finetune", "augment"),
    "knn": ("knn",),
    "export": ("export",),
}
# The evaluation configs of the digits dataset, suggested when a config lacks a group.
_EXAMPLE_CONFIGS = {"linear_eval": "configs/digits_linear_eval.py",
                    "finetune": "configs/digits_finetune.py", "knn": "configs/digits.py",
                    "export": "configs/digits.py", "pretrain": "configs/digits.py"}


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


def _positive_int(config, field: str):
  _positive(config, field)
  if int(_get(config, field)) != _get(config, field):
    _fail(field, _get(config, field), "expected an integer")


def _int_at_least(config, field: str, low: int, note: str = ""):
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    _fail(field, value, f"expected an integer >= {low}{note}")


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


def _validate_mode(config: ml_collections.ConfigDict) -> None:
  """config.mode is a mode, and the config has the groups that mode reads."""
  _one_of(config, "mode", choices.MODES)
  missing = [g for g in MODE_GROUPS[config.mode] if g not in config]
  if missing:
    _fail("mode", config.mode, f"this config has no {missing[0]!r} group; expected a "
          f"{config.mode} config, e.g. {_EXAMPLE_CONFIGS[config.mode]}")


def validate(config: ml_collections.ConfigDict, *, num_devices: int = 1,
             process_count: int = 1, min_image_size: int = 1) -> None:
  """Raises ConfigError for the first invalid field of `config` among those its mode
  reads. `min_image_size`: the pretraining encoder's smallest input side."""
  _validate_mode(config)
  batches = lambda *fields: _batch_sizes(config, fields, num_devices, process_count)
  _validate_program(config)
  _validate_data(config)
  if config.mode == "pretrain":
    batches("batch_size", "eval_batch_size")
    _validate_pretrain(config, num_devices, min_image_size)
  elif config.mode == "linear_eval":
    batches("linear_eval.batch_size", "eval_batch_size")
    _validate_linear_eval(config)
  elif config.mode == "finetune":
    batches("finetune.batch_size", "eval_batch_size")
    _validate_finetune(config)
  elif config.mode == "knn":
    batches("eval_batch_size")
    _validate_knn(config)
  else:
    _validate_export(config)


def check_projection_layer(field: str, layer: int, head_layers: int) -> None:
  """`layer` must name h (0) or one of the pretrained head's `head_layers` layers
  (known once the checkpoint is read)."""
  if not 0 <= layer <= head_layers:
    _fail(field, layer, f"expected an integer in [0, {head_layers}] (the pretrained "
                        f"projection head has {head_layers} layers; 0 = h)")


def check_examples(field: str, batch_size: int, num_examples: int) -> None:
  """A stage's global batch must fit in its training examples (known once the data is)."""
  if num_examples < batch_size:
    _fail(field, batch_size, f"expected at most the {num_examples} training examples "
                             "available")


def _batch_sizes(config, fields, num_devices: int, process_count: int):
  for field in fields:
    _positive_int(config, field)
    if _get(config, field) % num_devices:
      _fail(field, _get(config, field),
            f"a global batch must be divisible by the device count ({num_devices})")
    if _get(config, field) % process_count:
      _fail(field, _get(config, field),
            f"a global batch must be divisible by the process count ({process_count})")


def _run_length(config, prefix: str = ""):
  """A stage's duration: `num_train_steps` when > 0, else `num_epochs` (steps.py)."""
  if _get(config, f"{prefix}num_train_steps") <= 0:
    _positive(config, f"{prefix}num_epochs")


def _validate_program(config):
  cadences = ("log_every_steps", "eval_every_steps", "checkpoint_every_steps")
  for field in (*(f for f in cadences if f in config), "keep_checkpoints"):
    _positive_int(config, field)


def _validate_data(config):
  _positive_int(config, "data.image_size")
  _one_of(config, "data.process_sharding", choices.PROCESS_SHARDINGS)


def _validate_pretrain(config, num_devices: int, min_image_size: int):
  _run_length(config)
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
  _validate_optim(config, "optim")
  if "knn" in config:  # the kNN monitor
    _validate_knn(config)


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


def _validate_model(config):
  _one_of(config, "model.depth", choices.DEPTHS)
  _positive(config, "model.width_multiplier")
  for field in ("model.sk_ratio", "model.se_ratio"):
    _positive(config, field, strict=False)
  if config.model.sk_ratio > 0 and config.model.depth in (18, 34):
    _fail("model.sk_ratio", config.model.sk_ratio,
          "selective kernels need a bottleneck depth (model.depth 50, 101, 152 or 200)")
  _one_of(config, "model.dtype", choices.DTYPES)
  _one_of(config, "model.head_mode", choices.HEAD_MODES)
  _positive(config, "model.head_num_layers")
  _positive(config, "model.proj_dim")
  layers = {"none": 0, "linear": 1}.get(config.model.head_mode, config.model.head_num_layers)
  _one_of(config, "model.probe_from_projection_layer", range(layers + 1))


def _validate_crop(config):
  """The random resized crop, shared by pretraining and the supervised modes' views."""
  lo, hi = _pair(config, "augment.area_range")
  if not 0.0 < lo <= hi <= 1.0:
    _fail("augment.area_range", (lo, hi), "expected 0 < low <= high <= 1")
  lo, hi = _pair(config, "augment.aspect_ratio_range")
  if not 0.0 < lo <= hi:
    _fail("augment.aspect_ratio_range", (lo, hi), "expected 0 < low <= high")


def _validate_optim(config, group: str):
  _one_of(config, f"{group}.name", choices.OPTIMIZERS)
  _one_of(config, f"{group}.lr_scaling", choices.LR_SCALINGS)
  _one_of(config, f"{group}.schedule", choices.SCHEDULES)
  for field in ("base_lr", "weight_decay", "warmup_epochs", "momentum"):
    _positive(config, f"{group}.{field}", strict=False)


def _validate_linear_eval(config):
  _run_length(config, "linear_eval.")
  _every_steps(config, "linear_eval.eval_every_steps")
  _validate_crop(config)
  _validate_optim(config, "linear_eval.optim")
  _int_at_least(config, "linear_eval.from_projection_layer", 0, " (0 = h)")
  layer = config.linear_eval.from_projection_layer
  if layer and config.linear_eval.cached_features:
    _fail("linear_eval.from_projection_layer", layer,
          "the cached-features fast path reads h only: expected 0 with "
          "linear_eval.cached_features=True")


def _validate_finetune(config):
  ft = config.finetune
  _run_length(config, "finetune.")
  _every_steps(config, "finetune.eval_every_steps")
  _validate_crop(config)
  _validate_optim(config, "finetune.optim")
  if not 0.0 < ft.label_fraction <= 1.0:
    _fail("finetune.label_fraction", ft.label_fraction, "expected a fraction in (0, 1]")
  _int_at_least(config, "finetune.from_projection_layer", 0, " (0 = h)")
  if ft.fine_tune_after_block not in choices.FREEZE_THROUGH:
    _fail("finetune.fine_tune_after_block", ft.fine_tune_after_block,
          f"expected one of {list(choices.FREEZE_THROUGH)} (-1 = every layer, k = the "
          "stem and block groups 1..k frozen)")


def _validate_knn(config):
  _int_at_least(config, "knn.k", 1)
  if not config.knn.temperature > 0:
    _fail("knn.temperature", config.knn.temperature, "expected a number > 0")
  _int_at_least(config, "knn.query_batch", 1)


def _validate_export(config):
  size = config.export.image_size
  if size != -1:
    _int_at_least(config, "export.image_size", 1, " (-1 = the pretraining's)")


def _validate_augment(config):
  _validate_view(config, "augment")
  _one_of(config, "augment.blur_on", choices.BLUR_ON)
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
  _one_of(config, f"{view}.jitter_impl", choices.JITTER_IMPLS)
