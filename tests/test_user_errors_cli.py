"""`python main.py` with a user's mistake: one line on stderr naming the field, the value
and what is allowed, exit status 2, no traceback, nothing written; --verbose shows the
traceback. Mistakes caught before TensorFlow's import take about a second each."""

import os
import subprocess
import sys

import pytest

from configs import digits
from tests import cli

DIGITS_FIELDS = ", ".join(repr(k) for k in sorted(digits.get_config().model))


def run(workdir, *args, config="configs/digits.py"):
  return cli.run_main(config, str(workdir), *args, check=False, timeout=300)


def assert_one_line(proc, workdir, expected: str):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert proc.stderr.strip().splitlines() == [f"error: {expected}"], proc.stderr[-3000:]
  assert proc.stdout == ""
  assert not os.path.exists(workdir) or os.path.isfile(workdir)  # nothing written


@pytest.mark.parametrize("args,expected", [
    (["--config.model.dept=50"],
     "--config.model.dept=50: config.model has no field 'dept'; did you mean 'depth'?"),
    (["--config.modl.depth=50"],
     "--config.modl.depth=50: config has no field 'modl'; did you mean 'model' or 'mode'?"),
    (["--config.model.zzz=1"],
     f"--config.model.zzz=1: config.model has no field 'zzz'; its fields are [{DIGITS_FIELDS}]"),
    (["--config.batch_size=1.5"],
     "config.batch_size = '1.5' is not allowed: expected a value of type int"),
    (["--config.augment.area_range=1.5"],
     "config.augment.area_range = (1.5,) is not allowed: expected a pair (low, high), e.g. "
     "--config.augment.area_range='(0.1, 0.9)'"),
    (["--config.mode=pretrian"],
     "config.mode = 'pretrian' is not allowed: expected one of ['pretrain', 'linear_eval', "
     "'finetune', 'knn', 'export']"),
    (["--config=configs/no_such_config.py"],
     "--config = 'configs/no_such_config.py' is not allowed: no such file (expected a config "
     "file such as configs/digits.py)"),
    (["--config=configs/digits.py:extra"],
     "--config=configs/digits.py:extra: the config file failed to load: TypeError: "
     "get_config() takes 0 positional arguments but 1 was given"),
])
def test_mistake_before_tensorflow_is_one_line(tmp_path, args, expected):
  workdir = tmp_path / "run"
  assert_one_line(run(workdir, *args), str(workdir), expected)


@pytest.mark.parametrize("config,args,expected", [
    ("configs/digits.py", ["--config.mode=linear_eval"],
     "config.mode = 'linear_eval' is not allowed: this config has no 'linear_eval' group; "
     "expected a linear_eval config, e.g. configs/digits_linear_eval.py"),
    ("configs/digits_linear_eval.py", ["--config.linear_eval.optim.name=adam"],
     "config.linear_eval.optim.name = 'adam' is not allowed: expected one of ['lars', 'sgd', "
     "'adamw']"),
    ("configs/digits_finetune.py", ["--config.finetune.label_fraction=0.0"],
     "config.finetune.label_fraction = 0.0 is not allowed: expected a fraction in (0, 1]"),
])
def test_evaluation_config_mistake_is_one_line(tmp_path, config, args, expected):
  workdir = tmp_path / "run"
  assert_one_line(run(workdir, *args, config=config), str(workdir), expected)


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("")
  for workdir in (path, path / "below"):
    assert_one_line(run(workdir), str(path),
                    f"--workdir = '{workdir}' is not allowed: {path} is a file; expected a "
                    "folder (created when missing)")


def test_missing_flag_and_stray_argument(tmp_path):
  main = [sys.executable, os.path.join(cli.ROOT, "main.py"), "--config=configs/digits.py"]
  for args, expected in (([], "--workdir is required"),
                         ([f"--workdir={tmp_path / 'run'}", "extra"],
                          "unexpected arguments ['extra']: expected only --flags")):
    proc = subprocess.run(main + args, env=cli.env(), cwd=cli.ROOT, capture_output=True,
                          text=True, timeout=120)
    assert_one_line(proc, str(tmp_path / "run"), expected)


def test_verbose_shows_the_traceback(tmp_path):
  proc = run(tmp_path / "run", "--config.model.dept=50", "--verbose")
  assert proc.returncode != 0 and "Traceback (most recent call last)" in proc.stderr


@pytest.mark.slow
def test_unknown_dataset_suggests_close_names(tmp_path):
  workdir = tmp_path / "run"
  assert_one_line(run(workdir, "--config.dataset=cifar100x"), str(workdir),
                  "config.dataset = 'cifar100x' is not allowed: expected a tensorflow-datasets "
                  "name, 'digits' or 'folder:/path'; close names: cifar100, cifar10, cifar100_n")
