"""The batch-size sweep (simclr_jax/sweep.py): grid, LR rule, skip/resume, CSV and PNG.

All but the last test use a fake runner that writes metrics.jsonl the way main.py does,
without training; the last one runs a real 2-run sweep end to end (slow).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import base
from simclr_jax import sweep

NUM_TRAIN = 1438  # digits train split
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep_config(**changes):
  """A pretraining config with final probes; num_epochs a float field unless changed."""
  c = base.get_config()
  c.dataset = "digits"
  del c["num_epochs"]  # re-created with the type of the value given
  c.num_epochs = changes.pop("num_epochs", 10.0)
  c.probe.final = True
  c.optim.base_lr = 0.8
  for key, value in changes.items():
    *parents, field = key.split(".")
    target = c
    for parent in parents:
      target = target[parent]
    target[field] = value
  return c


def make_plan(tmp_path, batch_sizes=(32, 256), epochs=(1.0, 2.5), overrides=None, **changes):
  overrides = {"model.width_multiplier": 0.125} if overrides is None else overrides
  return sweep.plan(sweep_config(**changes), "configs/digits.py", overrides, batch_sizes,
                    epochs, str(tmp_path))


def parse_args(argv):
  """{flag: value} of a main.py command line (argv[0] is the interpreter)."""
  assert argv[1].endswith("main.py")
  return dict(a[2:].split("=", 1) for a in argv[2:])


class FakeMain:
  """Writes what main.py writes (training windows, online eval, final probes), at
  `rate` images/s; fails once, halfway, for the runs listed in `crash_once`."""

  def __init__(self, crash_once=()):
    self.calls = []
    self.crash_once = set(crash_once)

  def __call__(self, argv, log_path):
    args = parse_args(argv)
    workdir, b = args["workdir"], int(args["config.batch_size"])
    epochs = float(args["config.num_epochs"])
    steps = round(epochs * (NUM_TRAIN // b))
    ckpt = os.path.join(workdir, "checkpoints")
    resumed = os.path.isdir(ckpt)
    self.calls.append((b, epochs, resumed))
    with open(log_path, "a") as f:
      f.write("fake main.py\n")
    crash = (b, epochs) in self.crash_once
    self.crash_once.discard((b, epochs))
    start = steps // 2 if resumed else 0
    end = steps // 2 if crash else steps
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      for i, step in enumerate(range(start + 1, end + 1)):
        rate = 10.0 if i == 0 else b * 2.0 + step % 3  # first window: compilation
        f.write(json.dumps({"step": step, "loss": 5.0 - step / steps, "contrast_acc": 0.5,
                            "images_per_s": rate}) + "\n")
      if crash:
        os.makedirs(ckpt, exist_ok=True)
        f.write('{"step": 9, "lo')  # killed mid-write
        return 137
      f.write(json.dumps({"step": steps, "eval_probe_top1": 0.5 + b / 1000}) + "\n")
      f.write(json.dumps({"step": steps, "linear_probe_top1": 0.8 + b / 10000 + epochs / 100,
                          "linear_probe_5shot_top1": 0.6,
                          "random_init_linear_probe_top1": 0.3,
                          "wall_minutes": 1.5}) + "\n")
    return 0


# --- grid, names, learning rates ---------------------------------------------------------

def test_parse_grid_flags():
  assert sweep.parse_batch_sizes("32, 64,128") == [32, 64, 128]
  assert sweep.parse_epochs("5,0.5") == [5.0, 0.5]
  for bad, parser, message in [("32,x", sweep.parse_batch_sizes, "'x' is not an integer"),
                               ("0", sweep.parse_batch_sizes, "'0' is not an integer"),
                               ("32,32", sweep.parse_batch_sizes, "duplicate"),
                               ("5,-1", sweep.parse_epochs, "'-1' is not a number > 0"),
                               ("nan", sweep.parse_epochs, "'nan' is not a number > 0"),
                               ("5,5.0", sweep.parse_epochs, "duplicate")]:
    with pytest.raises(ValueError, match=message):
      parser(bad)


def test_plan_runs_each_grid_point_in_its_own_workdir(tmp_path):
  specs = make_plan(tmp_path)
  assert [(s.batch_size, s.epochs) for s in specs] == [(32, 1.0), (256, 1.0), (32, 2.5),
                                                      (256, 2.5)]
  assert [os.path.basename(s.workdir) for s in specs] == ["b32_e1", "b256_e1", "b32_e2.5",
                                                         "b256_e2.5"]
  assert all(os.path.dirname(s.workdir) == str(tmp_path) for s in specs)
  args = specs[2].args
  assert args[0] == sweep.MAIN
  assert "--config=configs/digits.py" in args
  assert f"--workdir={specs[2].workdir}" in args
  assert "--config.batch_size=32" in args and "--config.num_epochs=2.5" in args
  assert "--config.model.width_multiplier=0.125" in args
  assert len({s.workdir for s in specs}) == 4


@pytest.mark.parametrize("scaling,expected", [
    ("linear", {32: 0.8 * 32 / 256, 256: 0.8, 1024: 3.2}),
    ("sqrt", {32: 0.8 * 32 ** 0.5, 256: 0.8 * 16, 1024: 0.8 * 32}),
    ("none", {32: 0.8, 256: 0.8, 1024: 0.8}),
])
def test_peak_lr_follows_the_scaling_rule_from_the_config_base_lr(tmp_path, scaling,
                                                                    expected):
  specs = make_plan(tmp_path, batch_sizes=(32, 256, 1024), epochs=(1.0,),
                    **{"optim.lr_scaling": scaling})
  assert {s.batch_size: s.peak_lr for s in specs} == pytest.approx(expected)
  # The LR itself is not passed: each run scales config.optim.base_lr by its batch.
  assert not any("learning_rate" in a or "base_lr" in a for s in specs for a in s.args)


@pytest.mark.parametrize("overrides,changes,message", [
    ({"batch_size": 64}, {}, "--config.batch_size is set by the sweep's grid"),
    ({"num_epochs": 3}, {}, "--config.num_epochs is set by the sweep's grid"),
    ({}, {"num_train_steps": 100}, "num_train_steps = 100 would override"),
    ({}, {"probe.final": False}, "config.probe.final = True"),
    ({}, {"num_epochs": 10}, "epoch budget 2.5 is fractional"),
    ({}, {"loss.temperature": 0.0}, "config.loss.temperature = 0.0"),
])
def test_plan_rejects_settings_the_sweep_cannot_honour(tmp_path, overrides, changes,
                                                       message):
  with pytest.raises(ValueError, match=message):
    make_plan(tmp_path, overrides=overrides, **changes)


def test_integral_epochs_work_with_an_int_num_epochs_field(tmp_path):
  specs = make_plan(tmp_path, epochs=(1.0, 3.0), **{"num_epochs": 10})
  assert "--config.num_epochs=3" in specs[-1].args


# --- skip and resume ----------------------------------------------------------------------

def test_finished_runs_are_skipped_and_interrupted_ones_resumed(tmp_path):
  specs = make_plan(tmp_path)
  runner = FakeMain(crash_once={(256, 2.5)})
  outcome = sweep.execute(specs, runner, python="py")
  assert [outcome[s.workdir] for s in specs] == ["finished"] * 3 + ["failed"]
  assert runner.calls == [(32, 1.0, False), (256, 1.0, False), (32, 2.5, False),
                          (256, 2.5, False)]
  assert [sweep.is_finished(s.workdir) for s in specs] == [True, True, True, False]

  runner.calls.clear()
  outcome = sweep.execute(specs, runner, python="py")
  assert [outcome[s.workdir] for s in specs] == ["skipped"] * 3 + ["finished"]
  assert runner.calls == [(256, 2.5, True)]  # only the unfinished run, from its checkpoint

  runner.calls.clear()
  outcome = sweep.execute(specs, runner, python="py")
  assert set(outcome.values()) == {"skipped"} and runner.calls == []

  record = json.load(open(os.path.join(specs[3].workdir, sweep.RUN_FILE)))
  assert [i["returncode"] for i in record["invocations"]] == [137, 0]
  assert record["args"] == list(specs[3].args)


def test_the_runner_gets_the_interpreter_and_main_py_arguments(tmp_path):
  seen = []
  spec = make_plan(tmp_path, batch_sizes=(64,), epochs=(1.0,))[0]
  sweep.execute([spec], lambda argv, log: seen.append((argv, log)) or 1, python="/x/python")
  (argv, log), = seen
  assert argv == ["/x/python", *spec.args]
  assert log == os.path.join(spec.workdir, sweep.LOG_FILE)


def test_stop_on_error(tmp_path):
  specs = make_plan(tmp_path)
  runner = FakeMain(crash_once={(32, 1.0)})
  outcome = sweep.execute(specs, runner, python="py", stop_on_error=True)
  assert outcome == {specs[0].workdir: "failed"}


def test_a_workdir_started_with_other_settings_is_refused(tmp_path):
  spec = make_plan(tmp_path, batch_sizes=(64,), epochs=(1.0,))[0]
  sweep.execute([spec], FakeMain(crash_once={(64, 1.0)}), python="py")
  other = make_plan(tmp_path, batch_sizes=(64,), epochs=(1.0,),
                    overrides={"model.width_multiplier": 0.5})[0]
  assert other.workdir == spec.workdir
  with pytest.raises(ValueError, match="was started with different arguments"):
    sweep.execute([other], FakeMain(), python="py")


# --- collection ---------------------------------------------------------------------------

def test_results_csv_and_png_from_the_runs_metrics(tmp_path):
  specs = make_plan(tmp_path, batch_sizes=(32, 64, 128), epochs=(1.0, 2.0))
  sweep.execute(specs[:-1], FakeMain(), python="py")  # b128_e2 never ran
  sweep.execute(specs[1:2], FakeMain(), python="py")  # skipped: adds no invocation
  rows = sweep.collect(specs, str(tmp_path), title="test")

  table = sweep.read_csv(os.path.join(tmp_path, "results.csv"))
  assert [r["batch_size"] for r in table] == ["32", "64", "128", "32", "64", "128"]
  assert [r["run"] for r in table] == [os.path.basename(s.workdir) for s in specs]
  assert list(table[0])[:len(sweep.FIXED_COLUMNS)] == list(sweep.FIXED_COLUMNS)
  assert {"linear_probe_5shot_top1", "random_init_linear_probe_top1"} <= set(table[0])
  assert [r["status"] for r in table] == ["finished"] * 5 + ["missing"]
  assert table[-1]["linear_probe_top1"] == "" and table[-1]["images_per_s"] == ""
  for row, spec in zip(table[:5], specs[:5]):
    b, e = spec.batch_size, spec.epochs
    steps = round(e * (NUM_TRAIN // b))
    assert int(row["steps"]) == steps
    assert float(row["linear_probe_top1"]) == pytest.approx(0.8 + b / 10000 + e / 100)
    assert float(row["eval_probe_top1"]) == pytest.approx(0.5 + b / 1000)
    assert float(row["final_loss"]) == pytest.approx(4.0)
    assert float(row["peak_lr"]) == pytest.approx(0.8 * b / 256)
    # The median window after the first (compilation) one.
    assert float(row["images_per_s"]) == pytest.approx(
        np.median([b * 2.0 + s % 3 for s in range(2, steps + 1)]))
    assert float(row["wall_minutes"]) == 1.5
    assert float(row["sweep_wall_minutes"]) >= 0
    assert len(json.load(open(os.path.join(spec.workdir, sweep.RUN_FILE)))[
        "invocations"]) == 1
  assert rows[0]["batch_size"] == 32 and rows[0]["status"] == "finished"

  png = os.path.join(tmp_path, "scaling.png")
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  from matplotlib import image  # pylint: disable=g-import-not-at-top
  pixels = image.imread(png)
  assert pixels.shape[0] > 300 and pixels.shape[1] > 800
  assert pixels[..., :3].std() > 0.05  # something was drawn


def test_interrupted_run_is_reported_unfinished(tmp_path):
  spec = make_plan(tmp_path, batch_sizes=(64,), epochs=(2.0,))[0]
  sweep.execute([spec], FakeMain(crash_once={(64, 2.0)}), python="py")
  row = sweep.summarize(spec)
  assert row["status"] == "unfinished" and "linear_probe_top1" not in row
  assert row["steps"] == round(2.0 * (NUM_TRAIN // 64)) // 2  # the torn line is ignored


# --- end to end ---------------------------------------------------------------------------

@pytest.mark.slow
def test_real_sweep_end_to_end_then_rerun_skips(tmp_path):
  """python -m simclr_jax.sweep: 2 tiny runs of a few steps, CSV + PNG; a re-run skips."""
  sweep_dir = str(tmp_path / "sweep")
  command = [sys.executable, "-m", "simclr_jax.sweep", "--config=configs/digits_sweep.py",
             f"--sweep_dir={sweep_dir}", "--batch_sizes=128,256", "--epochs=0.4",
             "--config.model.width_multiplier=0.125", "--config.data.image_size=16",
             "--config.model.proj_dim=32",
             "--config.probe.draws=2", "--config.probe.random_init_baseline=False"]

  def run():
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc

  run()
  table = sweep.read_csv(os.path.join(sweep_dir, "results.csv"))
  assert [(r["batch_size"], r["status"]) for r in table] == [("128", "finished"),
                                                            ("256", "finished")]
  # The official count N x E // B + 1 (steps.py), N = 1,438 digits training images.
  assert [int(r["steps"]) for r in table] == [int(1438 * 0.4 // b) + 1 for b in (128, 256)]
  for r in table:
    assert 0.0 <= float(r["linear_probe_top1"]) <= 1.0
    assert float(r["images_per_s"]) > 0 and np.isfinite(float(r["final_loss"]))
  assert os.path.getsize(os.path.join(sweep_dir, "scaling.png")) > 10_000
  with open(os.path.join(sweep_dir, "b128_e0.4", "config_pretrain.json")) as f:
    saved = json.load(f)
  assert saved["batch_size"] == 128 and saved["num_epochs"] == 0.4
  assert saved["model"]["proj_dim"] == 32  # the overrides reach every run

  workdirs = [os.path.join(sweep_dir, r["run"]) for r in table]
  mtimes = {w: os.path.getmtime(os.path.join(w, "metrics.jsonl")) for w in workdirs}
  proc = run()
  assert "finished before, skipped" in proc.stderr
  for workdir, mtime in mtimes.items():
    assert os.path.getmtime(os.path.join(workdir, "metrics.jsonl")) == mtime
    with open(os.path.join(workdir, sweep.RUN_FILE)) as f:
      assert len(json.load(f)["invocations"]) == 1
