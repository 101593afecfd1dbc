"""`python main.py` end to end: the three configs build their pipelines and train on CPU,
bad configs fail early with a clear message, and the digits job writes its probes."""

import json
import os
import re

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
             "--config.log_every_steps=1", "--config.evals.online_probe.every_steps=3",
             "--config.data.shuffle_buffer=16", *overrides, devices=2)
  records = read_metrics(workdir)
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 3 and all(l > 0 for l in losses)
  assert any("eval_probe_top1" in r for r in records)
  for key in ("contrast_acc", "contrast_entropy", "probe_loss", "probe_acc", "learning_rate",
              "grad_norm"):
    assert key in records[0], key
  # Step 1 compiles the train step: no rate for it, one for every later window.
  train = [r for r in records if "loss" in r]
  assert "images_per_s" not in train[0]
  assert all(r["images_per_s"] > 0 and r["eta_minutes"] >= 0 for r in train[1:])
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "config_pretrain.json")) as f:
    assert json.load(f)["batch_size"] == 16


@pytest.mark.parametrize("override,message", [
    ("--config.batch_size=30", "config.batch_size = 30"),  # 4 devices
    ("--config.loss.temperature=0", "config.loss.temperature = 0.0"),
    ("--config.data.image_size=4", "config.data.image_size = 4"),
    ("--config.model.depth=19", "config.model.depth = 19"),
    ("--config.augment.blur_on=gpu", "config.augment.blur_on = 'gpu'"),
])
def test_invalid_config_fails_early_naming_the_field(tmp_path, override, message):
  proc = cli.run_main("configs/digits.py", str(tmp_path / "run"), *cli.TINY, override,
                      devices=4, check=False, timeout=180)
  assert proc.returncode == 2
  [line] = proc.stderr.strip().splitlines()
  assert line.startswith(f"error: {message} is not allowed: "), proc.stderr[-3000:]
  assert not os.path.exists(tmp_path / "run")


PROGRESS = re.compile(r"step (\d+)/4 \((\d+)%\)  ETA [\dhms]+  \d+ img/s  loss [\d.]+  "
                      r"contrast_acc [\d.e-]+  probe_acc [\d.e-]+  lr [\d.e-]+")


def test_digits_job_writes_probe_table(tmp_path):
  workdir = str(tmp_path)
  args = (*cli.TINY[:-1], "--config.num_train_steps=4", "--config.log_every_steps=2",
          "--config.evals.linear_probes.draws=2")
  proc = cli.run_main("configs/digits.py", workdir, *args)
  records = read_metrics(workdir)
  final = records[-1]
  for key in ("linear_probe_top1", "linear_probe_5shot_top1", "random_init_linear_probe_top1",
              "random_init_linear_probe_5shot_top1"):
    assert 0.0 <= final[key] <= 1.0, key
  # 360 test images, 10 classes: any probe beats chance on these features.
  assert final["linear_probe_top1"] > 0.3
  assert "linear_probe_top1" in proc.stdout
  # What the console says: progress lines, the compile time apart, a summary; no
  # TensorFlow start-up messages and no config dump (the config is in the workdir).
  console = proc.stderr
  assert [m.groups() for m in PROGRESS.finditer(console)] == [("2", "50"), ("4", "100")]
  assert "step 1/4: compiling the train step" in console
  assert re.search(r"\(first step, compiling: [\dhms]+\)", console)
  assert re.search(r"Pretraining done: 4 steps in [\dhms]+, last loss [\d.]+; checkpoint "
                   f"{re.escape(workdir)}/checkpoints/4", console)
  for noise in ("oneDNN", "absl::InitializeLog", "Config:", "contrast_entropy="):
    assert noise not in console, noise
  assert os.path.exists(os.path.join(workdir, "config_pretrain.json"))
  # A re-run of the finished run says so and exits without training or probing again.
  again = cli.run_main("configs/digits.py", workdir, *args)
  assert (f"Already finished: step 4/4, checkpoint {workdir}/checkpoints/4"
          in again.stderr), again.stderr[-3000:]
  assert "compiling" not in again.stderr and again.stdout == ""
  assert read_metrics(workdir) == records


def test_dry_run_prints_config_and_plan(tmp_path):
  workdir = str(tmp_path / "run")
  proc = cli.run_main("configs/digits.py", workdir, "--dry_run", "--config.batch_size=64",
                      devices=2)
  plan = dict(re.findall(r"^(\S.*?)  +(\S.*)$", proc.stdout.split("Run plan (pretrain)")[1],
                         re.M))
  # digits: 1,438 training images; 30 epochs; 3 warm-up epochs; LR 1.0 x 64/256.
  assert plan["train examples"] == "1,438" and plan["steps per epoch"] == "22"
  # The official counts (steps.py): N x E // B + 1 and round(W x N // B), N = 1,438.
  assert plan["total steps"] == str(1438 * 30 // 64 + 1)
  assert plan["warm-up steps"] == str(round(3 * 1438 // 64))
  assert plan["peak learning rate"] == "0.25" and plan["per-device batch"] == "32"
  assert int(plan["parameters"].replace(",", "")) > 100_000
  assert plan["evaluations"] == "linear_probes at the end, online_probe every 100 steps"
  assert "temperature: 0.2" in proc.stdout  # the resolved config
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
