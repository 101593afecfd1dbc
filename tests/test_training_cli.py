"""`python main.py` end to end: the three configs build their pipelines and train on CPU,
bad configs fail early with a clear message, and the digits job writes its probes."""

import json
import os

import pytest

from simclr_jax import metric_log
from tests import cli
from tests.subproc import run_worker

pytestmark = pytest.mark.slow


def read_metrics(workdir):
  return metric_log.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


@pytest.mark.parametrize("config,overrides", [
    ("configs/cifar10.py", ["--config.data.cache=False"]),
    # The ImageNet config as is (bfloat16, blur on the device, ImageNet stem) at 64 px.
    ("configs/imagenet.py", ["--config.data.image_size=64", "--config.model.depth=18"]),
])
def test_paper_configs_run_on_mock_data(tmp_path, config, overrides):
  workdir = str(tmp_path)
  run_worker("main_with_mock_data.py", "64", "--", f"--config={config}",
             f"--workdir={workdir}", "--config.batch_size=16", "--config.eval_batch_size=16",
             "--config.model.width_multiplier=0.125", "--config.num_train_steps=3",
             "--config.log_every_steps=1", "--config.eval_every_steps=3",
             "--config.data.shuffle_buffer=16", *overrides, devices=2)
  records = read_metrics(workdir)
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 3 and all(l > 0 for l in losses)
  assert any("eval_probe_top1" in r for r in records)
  for key in ("contrast_acc", "contrast_entropy", "probe_loss", "probe_acc", "learning_rate",
              "grad_norm", "images_per_s", "eta_minutes"):
    assert key in records[0], key
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "config_pretrain.json")) as f:
    assert json.load(f)["batch_size"] == 16


@pytest.mark.parametrize("override,message", [
    ("--config.batch_size=30", "config.batch_size = 30"),  # 4 devices
    ("--config.loss.temperature=0", "config.loss.temperature = 0"),
    ("--config.data.image_size=4", "config.data.image_size = 4"),
    ("--config.dataset=no_such_dataset", "no_such_dataset"),
    ("--config.model.depth=19", "config.model.depth = 19"),
    ("--config.augment.blur_on=gpu", "config.augment.blur_on = 'gpu'"),
])
def test_invalid_config_fails_early_naming_the_field(tmp_path, override, message):
  proc = cli.run_main("configs/digits.py", str(tmp_path), *cli.TINY, override, devices=4,
                      check=False, timeout=180)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-3000:]
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_unknown_config_field_is_rejected(tmp_path):
  proc = cli.run_main("configs/digits.py", str(tmp_path), "--config.model.dept=50",
                      check=False, timeout=180)
  assert proc.returncode != 0 and "dept" in proc.stderr


def test_digits_job_writes_probe_table(tmp_path):
  workdir = str(tmp_path)
  proc = cli.run_main("configs/digits.py", workdir, *cli.TINY[:-1], "--config.num_train_steps=4",
                      "--config.probe.draws=2")
  final = read_metrics(workdir)[-1]
  for key in ("linear_probe_top1", "linear_probe_5shot_top1", "random_init_linear_probe_top1",
              "random_init_linear_probe_5shot_top1"):
    assert 0.0 <= final[key] <= 1.0, key
  # 360 test images, 10 classes: any probe beats chance on these features.
  assert final["linear_probe_top1"] > 0.3
  assert "linear_probe_top1" in proc.stdout
