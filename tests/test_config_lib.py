"""Configs: one validation (config_lib) against the implementing modules' own lists of
allowed values, each mode's config checked on the groups it reads, evaluation configs
without pretraining groups, config files that state only what differs, and the one
duration helper (steps.py)."""

import glob
import importlib
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import base
from configs import digits
from simclr_jax import choices
from simclr_jax import config_lib
from simclr_jax import steps
from tests import cli

CONFIG_NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(cli.ROOT, "configs", "*.py")) if not p.endswith(("__init__.py", "base.py")))
COMMON_FIELDS = set(base.linear_eval_config()) - {"linear_eval", "augment"}
CROP_FLIP = {"crop", "area_range", "aspect_ratio_range", "flip"}


def _config(name):
  return importlib.import_module(f"configs.{name}").get_config()


def _set(config, field, value):
  config.update_from_flattened_dict({field: value})


# --- the allowed values: one tuple each, the implementing module's ---------------------


@pytest.mark.parametrize("module,attr,name", [
    ("simclr_jax.optim", "OPTIMIZERS", "OPTIMIZERS"),
    ("simclr_jax.optim", "LR_SCALINGS", "LR_SCALINGS"),
    ("simclr_jax.optim", "SCHEDULES", "SCHEDULES"),
    ("simclr_jax.models.heads", "HEAD_MODES", "HEAD_MODES"),
    ("simclr_jax.models.resnet", "SUPPORTED_DEPTHS", "DEPTHS"),
    ("simclr_jax.models.resnet", "FREEZE_THROUGH", "FREEZE_THROUGH"),
    ("simclr_jax.augment.spec", "JITTER_IMPLS", "JITTER_IMPLS"),
    ("simclr_jax.data.streams", "PROCESS_SHARDINGS", "PROCESS_SHARDINGS"),
])
def test_the_implementing_module_uses_the_same_tuple(module, attr, name):
  assert getattr(importlib.import_module(module), attr) is getattr(choices, name)


def test_the_implementations_cover_exactly_the_allowed_values():
  from simclr_jax.models import resnet  # pylint: disable=import-outside-toplevel
  from simclr_jax.models import simclr  # pylint: disable=import-outside-toplevel
  assert set(resnet._ARCHS) == set(choices.DEPTHS)  # pylint: disable=protected-access
  assert tuple(simclr._DTYPES) == choices.DTYPES  # pylint: disable=protected-access
  assert set(config_lib.MODE_GROUPS) == set(choices.MODES)
  # config_lib keeps no list of its own.
  assert not [k for k, v in vars(config_lib).items() if isinstance(v, (tuple, list))]


@pytest.mark.parametrize("config_name,field,name,sentinel", [
    ("digits", "model.depth", "DEPTHS", 77),
    ("digits", "model.dtype", "DTYPES", "float8"),
    ("digits", "model.head_mode", "HEAD_MODES", "deep"),
    ("digits", "optim.name", "OPTIMIZERS", "adafactor"),
    ("digits", "optim.lr_scaling", "LR_SCALINGS", "cube"),
    ("digits", "optim.schedule", "SCHEDULES", "step"),
    ("digits", "augment.jitter_impl", "JITTER_IMPLS", "simclrv3"),
    ("digits", "augment.blur_on", "BLUR_ON", "gpu"),
    ("digits", "data.process_sharding", "PROCESS_SHARDINGS", "rows"),
    ("digits_finetune", "finetune.fine_tune_after_block", "FREEZE_THROUGH", 9),
    ("digits_finetune", "finetune.optim.name", "OPTIMIZERS", "adafactor"),
    ("digits_linear_eval", "linear_eval.optim.schedule", "SCHEDULES", "step"),
])
def test_validation_reads_the_shared_tuple(monkeypatch, config_name, field, name, sentinel):
  config = _config(config_name)
  _set(config, field, sentinel)
  with pytest.raises(config_lib.ConfigError, match=rf"config.{field} = {sentinel!r} is not "
                     rf"allowed: expected one of \[.*{getattr(choices, name)[-1]!r}\]"):
    config_lib.validate(config)
  monkeypatch.setattr(choices, name, getattr(choices, name) + (sentinel,))
  config_lib.validate(config)  # allowed as soon as the shared tuple allows it


def test_config_checks_import_neither_jax_nor_tensorflow():
  code = ("import sys; from simclr_jax import config_lib, steps; from configs import digits;"
          "config_lib.validate(digits.get_config());"
          "print(sorted(m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=cli.ROOT, env=cli.env(),
                        capture_output=True, text=True, timeout=120, check=True)
  assert proc.stdout.strip() == "[]", proc.stderr[-2000:]


# --- each mode: its groups only ------------------------------------------------------


@pytest.mark.parametrize("mode", ["knn", "export"])
def test_knn_and_export_read_only_their_group(mode):
  config = digits.get_config()
  config.mode = mode
  config_lib.validate(config)
  config.optim.name = "adafactor"  # pretraining's groups are not read
  config.model.depth = 77
  config.loss.temperature = -1.0
  config_lib.validate(config)
  slim = ml_collections.ConfigDict({k: config[k] for k in COMMON_FIELDS | {mode}})
  config_lib.validate(slim)  # the common fields and its group are all it needs
  config.mode = "pretrain"
  with pytest.raises(config_lib.ConfigError, match="config.model.depth = 77"):
    config_lib.validate(config)


@pytest.mark.parametrize("mode,field,value", [
    ("knn", "knn.k", 0), ("knn", "eval_batch_size", 0),
    ("export", "export.image_size", 0)])
def test_knn_and_export_check_their_group(mode, field, value):
  config = digits.get_config()
  config.mode = mode
  _set(config, field, value)
  with pytest.raises(config_lib.ConfigError, match=rf"config.{field} = {value}"):
    config_lib.validate(config)


@pytest.mark.parametrize("config_name,mode", [
    ("digits", "linear_eval"), ("digits", "finetune"), ("digits_linear_eval", "pretrain"),
    ("digits_finetune", "linear_eval"), ("digits_linear_eval", "knn")])
def test_a_config_without_the_modes_group_is_refused(config_name, mode):
  config = _config(config_name)
  config.mode = mode
  with pytest.raises(config_lib.ConfigError, match=(
      rf"^config.mode = '{mode}' is not allowed: this config has no '\w+' group; expected "
      rf"a {mode} config, e.g. configs/digits\w*.py$")):
    config_lib.validate(config)


def test_device_counts_are_checked_for_the_modes_batches():
  config = _config("digits_finetune")  # eval_batch_size 256
  config.finetune.batch_size = 96
  config_lib.validate(config, num_devices=8, process_count=2)
  with pytest.raises(config_lib.ConfigError, match="config.finetune.batch_size = 96 .*"
                     r"device count \(64\)"):
    config_lib.validate(config, num_devices=64)
  with pytest.raises(config_lib.ConfigError, match=r"config.eval_batch_size = 256 .*\(3\)"):
    config_lib.validate(config, process_count=3)


# --- the config files ----------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_is_valid_and_holds_only_its_modes_groups(name):
  config = _config(name)
  config_lib.validate(config, num_devices=8)
  if config.mode in ("linear_eval", "finetune"):
    assert set(config) == COMMON_FIELDS | {config.mode, "augment"}
    assert set(config.augment) == CROP_FLIP  # no colour, blur, ...


def test_evaluation_bases_carry_no_pretraining_groups():
  pretraining_only = set(base.get_config()) - COMMON_FIELDS - {"augment", "knn", "export"}
  assert pretraining_only >= {"model", "loss", "optim", "evals", "batch_size", "num_epochs",
                              "num_train_steps"}
  for config in (base.linear_eval_config(), base.finetune_config()):
    assert not pretraining_only & set(config), config.mode
    assert set(config.augment) == CROP_FLIP


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_files_state_only_what_differs(monkeypatch, name):
  """No assignment in a config file (or its bases) sets a field to the value it has."""
  restated = []
  setitem = ml_collections.ConfigDict.__setitem__

  def recording(self, key, value):
    if (key in self and self[key] == value
        and isinstance(self[key], bool) == isinstance(value, bool)):
      restated.append((key, value))
    setitem(self, key, value)
  monkeypatch.setattr(ml_collections.ConfigDict, "__setitem__", recording)
  for module in [m for m in sys.modules if m.startswith("configs.")]:
    monkeypatch.delitem(sys.modules, module)  # re-run every module's top level too
  _config(name)
  assert not restated


# --- durations -----------------------------------------------------------------------


@pytest.mark.parametrize("n,batch,epochs", [
    (1437, 128, 30), (1437, 128, 0.5), (50_000, 512, 2.75), (100, 32, 1e-3)])
def test_run_length_in_epochs_is_the_official_count(n, batch, epochs):
  stage = ml_collections.ConfigDict(dict(batch_size=batch, num_epochs=epochs,
                                         num_train_steps=-1))
  want = int(np.floor(np.float64(n) * epochs / batch)) + 1  # N x E // B + 1
  assert steps.run_length(stage, n) == (n // batch, want)
  assert steps.epochs_to_steps(epochs, n, batch) == want - 1


def test_run_length_in_steps_wins_over_epochs():
  stage = ml_collections.ConfigDict(dict(batch_size=32, num_epochs=1000.0,
                                         num_train_steps=7))
  assert steps.run_length(stage, 100) == (3, 7)
  stage.batch_size = 128
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.finetune.batch_size = 128 is not allowed: expected at "
                           r"most the 100 training examples available$"):
    steps.run_length(stage, 100, prefix="finetune.")


@pytest.mark.parametrize("name,prefix", [
    ("digits", ""), ("digits_linear_eval", "linear_eval."), ("digits_finetune", "finetune.")])
def test_every_stage_states_its_duration_the_same_way(name, prefix):
  config = _config(name)
  stage = config[prefix[:-1]] if prefix else config
  stage.num_epochs = 0.25  # any float
  config_lib.validate(config)
  stage.num_epochs = 0.0
  with pytest.raises(config_lib.ConfigError,
                     match=rf"config.{prefix}num_epochs = 0.0 is not allowed"):
    config_lib.validate(config)
  stage.num_train_steps = 5  # steps instead of epochs
  config_lib.validate(config)


def test_warmup_uses_the_same_conversion():
  from simclr_jax import optim  # pylint: disable=import-outside-toplevel
  # ImageNet: round(10 x 1,281,167 // 4096) = 3,127 (official); capped at the run length.
  assert optim.warmup_steps(10.0, 1_281_167, 4096, total_steps=31_279) == 3127
  assert steps.epochs_to_steps(10.0, 1_281_167, 4096) == 3127
  assert optim.warmup_steps(2.5, 1000, 100, total_steps=20) == 20
