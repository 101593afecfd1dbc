"""End to end from the command line: pretrain briefly on digits, then linear evaluation
(protocol and cached fast path), fine-tuning on 10% of the labels, kNN and export, each
a `python main.py` run whose figures land in metrics.jsonl (export: export_metrics.jsonl;
its run is the README's export block)."""

import json
import os
import shutil
import signal

import numpy as np
import pytest

from simclr_jax import metric_log
from tests import cli
from tests import readme

pytestmark = pytest.mark.slow

STEPS = 3


def records(workdir):
  return metric_log.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def final(workdir, key):
  """The last record holding `key`."""
  found = [r for r in records(workdir) if key in r]
  assert found, f"no {key} in {workdir}/metrics.jsonl"
  return found[-1]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A digits pretraining workdir (3 steps, kNN monitor on at the last step)."""
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  cli.run_main("configs/digits.py", workdir, *cli.TINY, f"--config.num_train_steps={STEPS}",
               f"--config.checkpoint_every_steps={STEPS}",
               f"--config.evals.knn.every_steps={STEPS}")
  return workdir


def eval_run(config, pretrained, workdir, *overrides):
  """main.py on the pretrained workdir; reuses its digits build (config.data_dir)."""
  cli.run_main(config, str(workdir), *cli.TINY_DATA, f"--config.init_from={pretrained}",
               f"--config.data_dir={os.path.join(pretrained, 'tfds')}",
               "--config.log_every_steps=1", *overrides)
  return str(workdir)


def test_linear_eval(pretrained, tmp_path):
  workdir = eval_run("configs/digits_linear_eval.py", pretrained, tmp_path,
                     "--config.linear_eval.batch_size=64",
                     "--config.linear_eval.num_train_steps=4")
  result = final(workdir, "linear_eval_top1")
  assert result["step"] == 4 and result["pretrain_step"] == STEPS
  assert 0.0 <= result["linear_eval_top1"] <= result["linear_eval_top5"] <= 1.0
  train = [r for r in records(workdir) if "linear_eval_train_loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4]
  assert all(np.isfinite(r["linear_eval_train_loss"]) for r in train)
  assert not any(k.startswith("linear_eval_cached") for r in records(workdir) for k in r)
  with open(os.path.join(workdir, "config_linear_eval.json")) as f:
    assert json.load(f)["linear_eval"]["batch_size"] == 64


def test_linear_eval_cached_fast_path_is_labelled(pretrained, tmp_path):
  workdir = eval_run("configs/digits_linear_eval.py", pretrained, tmp_path,
                     "--config.linear_eval.cached_features=True",
                     "--config.linear_eval.batch_size=128",
                     "--config.linear_eval.num_epochs=20",
                     "--config.linear_eval.optim.base_lr=4.0")
  result = final(workdir, "linear_eval_cached_top1")
  assert "cached features" in result["protocol"]
  assert not any("linear_eval_top1" in r for r in records(workdir))  # never the protocol's
  # A trained classifier, well above the 10% of the zero-initialised one.
  assert result["linear_eval_cached_top1"] > 0.25
  assert result["linear_eval_cached_epochs"] == pytest.approx(20, rel=0.05)


def test_finetune_on_ten_percent(pretrained, tmp_path):
  workdir = eval_run("configs/digits_finetune.py", pretrained, tmp_path,
                     "--config.finetune.batch_size=32", "--config.finetune.num_train_steps=3",
                     "--config.finetune.from_projection_layer=1")
  result = final(workdir, "finetune_top1")
  assert result["finetune_label_fraction"] == 0.1
  assert 130 <= result["finetune_num_labels"] <= 160  # ~10% of 1,437, class-balanced
  assert result["finetune_from_projection_layer"] == 1
  assert 0.0 <= result["finetune_top1"] <= result["finetune_top5"] <= 1.0
  assert len([r for r in records(workdir) if "finetune_train_loss" in r]) == 3


def test_finetune_sigterm_then_resume_equals_uninterrupted_run(pretrained, tmp_path):
  """Fine-tuning checkpoints (<workdir>/finetune_checkpoints): SIGTERM saves and exits,
  the same command resumes, and the result is the uninterrupted run's."""
  steps = 8
  run = ("--config.finetune.batch_size=32", f"--config.finetune.num_train_steps={steps}",
         "--config.checkpoint_every_steps=1000")
  straight = eval_run("configs/digits_finetune.py", pretrained, tmp_path / "straight", *run)
  workdir = str(tmp_path / "stopped")
  proc = cli.start_main("configs/digits_finetune.py", workdir, *cli.TINY_DATA,
                        f"--config.init_from={pretrained}",
                        f"--config.data_dir={os.path.join(pretrained, 'tfds')}",
                        "--config.log_every_steps=1", *run)
  cli.wait_for_step(workdir, 2, proc, key="finetune_train_loss")
  assert cli.kill(proc, signal.SIGTERM) == 0
  stopped_at = max(r["step"] for r in records(workdir) if "finetune_train_loss" in r)
  assert stopped_at < steps, "the run finished before it could be stopped"
  assert os.listdir(os.path.join(workdir, "finetune_checkpoints")) == [str(stopped_at)]
  assert not any("finetune_top1" in r for r in records(workdir))
  eval_run("configs/digits_finetune.py", pretrained, workdir, *run)

  def losses(w):
    return {r["step"]: r["finetune_train_loss"] for r in records(w)
            if "finetune_train_loss" in r}

  expected, got = losses(straight), losses(workdir)
  assert sorted(got) == sorted(expected) == list(range(1, steps + 1))
  np.testing.assert_allclose([got[s] for s in range(1, steps + 1)],
                             [expected[s] for s in range(1, steps + 1)], rtol=1e-5)
  a, b = final(straight, "finetune_top1"), final(workdir, "finetune_top1")
  assert a["finetune_top1"] == pytest.approx(b["finetune_top1"], abs=1e-6)
  assert str(steps) in os.listdir(os.path.join(workdir, "finetune_checkpoints"))


def test_knn_mode_matches_the_pretraining_monitor(pretrained, tmp_path):
  workdir = eval_run("configs/digits.py", pretrained, tmp_path, "--config.mode=knn")
  result = final(workdir, "knn_top1")
  monitor = final(pretrained, "knn_top1")  # written by train.py at the last step
  assert monitor["step"] == STEPS
  assert result["knn_top1"] == monitor["knn_top1"]  # same encoder, same protocol
  assert result["knn_top5"] == monitor["knn_top5"]
  assert result["knn_k"] == 200 and result["knn_temperature"] == 0.1
  assert result["knn_top1"] > 0.2  # chance is 0.1


def test_readme_export_example(pretrained, tmp_path):
  """The README's export block, on a copy of the pretrained workdir (16 px, width 1/8)."""
  demo = str(tmp_path / "demo")
  shutil.copytree(pretrained, demo)
  proc = readme.run_shell_block("export", {"workdirs/demo": demo},
                                ["--config.export.platforms=('cpu',)"])
  assert "h (8, 64) saved_model h (8, 64) z (8, 128)" in proc.stdout, proc.stdout[-2000:]
  # The mode's checks: its own file; the pretraining's metrics.jsonl is left as it was.
  result = metric_log.read_jsonl(os.path.join(demo, "export_metrics.jsonl"))[-1]
  assert result["export_image_size"] == 16  # the pretraining's, not digits.py's 32
  diffs = [v for k, v in result.items() if "_rel_err_" in k]
  assert len(diffs) == 5 and max(diffs) < 1e-5
  assert records(demo) == records(pretrained)
  assert sorted(os.listdir(os.path.join(demo, "export"))) == [
      "encoder.jax_export", "model.json", "saved_model", "variables"]


def test_readme_finetune_and_knn_examples(pretrained, tmp_path):
  """The README's fine-tuning and kNN blocks as written, on the pretrained workdir (tiny
  overrides appended): kNN gives the pretraining monitor's figures (same encoder, same
  protocol), fine-tuning trains its 3 steps."""
  paths = {"workdirs/demo_finetune": str(tmp_path / "finetune"),
           "workdirs/demo_knn": str(tmp_path / "knn"), "workdirs/demo": pretrained}
  tiny = (*cli.TINY_DATA, f"--config.data_dir={os.path.join(pretrained, 'tfds')}",
          "--config.log_every_steps=1")
  readme.run_shell_block("knn", paths, tiny)
  result, monitor = final(paths["workdirs/demo_knn"], "knn_top1"), final(pretrained, "knn_top1")
  assert (result["knn_top1"], result["knn_top5"]) == (monitor["knn_top1"], monitor["knn_top5"])
  readme.run_shell_block("finetune", paths, (*tiny, "--config.finetune.batch_size=32",
                                             "--config.finetune.num_train_steps=3"))
  finetuned = paths["workdirs/demo_finetune"]
  assert 0.0 <= final(finetuned, "finetune_top1")["finetune_top1"] <= 1.0
  assert len([r for r in records(finetuned) if "finetune_train_loss" in r]) == 3


def test_export_into_the_pretraining_workdir_is_refused(pretrained, tmp_path):
  """`--config.export.dir` = the workdir used to delete the run's checkpoints, config and
  data before writing the export: now refused before anything is written."""
  workdir = str(tmp_path / "pretrain")
  shutil.copytree(pretrained, workdir)

  def contents():
    return sorted((os.path.relpath(os.path.join(d, f), workdir), os.path.getsize(
        os.path.join(d, f))) for d, _, names in os.walk(workdir) for f in names)
  before = contents()
  proc = cli.run_main("configs/digits.py", workdir, *cli.TINY, "--config.mode=export",
                      f"--config.export.dir={workdir}", check=False, timeout=300)
  assert proc.returncode != 0
  assert (f"config.export.dir = '{workdir}' is not allowed: it is the workdir"
          in proc.stderr), proc.stderr[-3000:]
  assert contents() == before
  assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_missing_checkpoint_fails_clearly(tmp_path):
  proc = cli.run_main("configs/digits_linear_eval.py", str(tmp_path / "run"), *cli.TINY_DATA,
                      f"--config.init_from={tmp_path / 'nothing'}", check=False, timeout=300)
  assert proc.returncode != 0
  assert "does not exist" in proc.stderr and "nothing" in proc.stderr, proc.stderr[-2000:]
