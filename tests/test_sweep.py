"""The sweep tool (tools/): grid parsing and planning, skip/resume/refusal, CSV, Markdown
and each study's figure.

All but the last test use a fake runner (or synthetic rows) instead of training; the
last one runs a real 2-run sweep end to end (slow).
"""

import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import base
from tools import grid
from tools import report
from tools import runs
from tools import studies
from tools import sweep

NUM_TRAIN = 1438  # digits train split
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep_config(**changes):
  """A pretraining config with final probes; num_epochs a float field unless changed."""
  c = base.get_config()
  c.dataset = "digits"
  del c["num_epochs"]  # re-created with the type of the value given
  c.num_epochs = changes.pop("num_epochs", 10.0)
  c.evals.linear_probes.every_steps = 0
  c.optim.base_lr = 0.8
  c.update_from_flattened_dict(changes)
  return c


def make_plan(tmp_path, batch_sizes=("32", "256"), epochs=("1.0", "2.5"), overrides=None,
              **changes):
  """The batch_epochs study's runs, as --batch_sizes/--epochs give them."""
  overrides = {"model.width_multiplier": 0.125} if overrides is None else overrides
  axes = [grid.Axis("batch_size", tuple(batch_sizes)), grid.Axis("num_epochs", tuple(epochs))]
  points, fields = studies.study_points(studies.STUDIES["batch_epochs"], axes)
  return grid.plan(sweep_config(**changes), "configs/digits.py", overrides, points,
                   str(tmp_path), fields)


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


# --- grid parsing -------------------------------------------------------------------------

def test_split_values_keeps_tuples_and_quoted_commas_whole():
  assert grid.split_values("0.1, 0.5,1") == ["0.1", "0.5", "1"]
  assert grid.split_values("(0.08, 1.0),(0.5,1.0)") == ["(0.08, 1.0)", "(0.5,1.0)"]
  assert grid.split_values("'a,b',[1, 2]") == ["'a,b'", "[1, 2]"]


def test_parse_axis_and_values_by_the_field_type():
  axis = grid.parse_axis("config.augment.area_range=(0.08, 1.0),(0.5,1.0)")
  assert axis == grid.Axis("augment.area_range", ("(0.08, 1.0)", "(0.5,1.0)"))
  c = sweep_config()
  assert [grid.parse_value(c, axis.field, t) for t in axis.texts] == [(0.08, 1.0), (0.5, 1.0)]
  assert grid.parse_value(c, "loss.hidden_norm", "false") is False
  assert grid.parse_value(c, "loss.temperature", "1") == 1.0
  assert isinstance(grid.parse_value(c, "loss.temperature", "1"), float)
  assert grid.parse_value(c, "batch_size", "64") == 64
  assert grid.parse_value(c, "model.head_mode", "none") == "none"


@pytest.mark.parametrize("text,message", [
    ("loss.temperature", r"--grid 'loss.temperature': expected <field>=<value>"),
    ("loss temperature=1", r"expected <field>=<value>"),
    ("loss.temperature=0.1,,0.5", r"--grid loss.temperature: empty value in '0.1,,0.5'"),
    ("loss.temperature=0.1,0.1", r"--grid loss.temperature: duplicate values"),
])
def test_parse_axis_rejects_malformed_axes(text, message):
  with pytest.raises(ValueError, match=message):
    grid.parse_axis(text)


@pytest.mark.parametrize("field,text,message", [
    ("loss.temperature", "x", r"--grid loss.temperature: 'x' is not allowed: expected a "
     r"number"),
    ("loss.hidden_norm", "maybe", r"'maybe' is not allowed: expected True or False"),
    ("batch_size", "6.5", r"--grid batch_size: '6.5' is not allowed: expected an integer"),
    ("loss.nope", "1", r"loss.nope: no such config field"),
])
def test_parse_value_names_the_field_and_the_bad_value(field, text, message):
  with pytest.raises(ValueError, match=message) as error:
    grid.parse_value(sweep_config(), field, text)
  assert "\n" not in str(error.value)


def test_two_axes_make_their_product_first_axis_outermost(tmp_path):
  axes = [grid.parse_axis("loss.hidden_norm=True,False"),
          grid.parse_axis("augment.area_range=(0.3, 1.0),(0.5,1.0)")]
  points, fields = studies.study_points(studies.grid_study(axes), axes)
  specs = grid.plan(sweep_config(), "c.py", {"model.width_multiplier": 0.125}, points,
                    str(tmp_path), fields)
  assert [s.columns for s in specs] == [
      {"loss.hidden_norm": True, "augment.area_range": (0.3, 1.0)},
      {"loss.hidden_norm": True, "augment.area_range": (0.5, 1.0)},
      {"loss.hidden_norm": False, "augment.area_range": (0.3, 1.0)},
      {"loss.hidden_norm": False, "augment.area_range": (0.5, 1.0)}]
  assert [s.name for s in specs] == [
      "hidden_norm=True_area_range=_0.3_1.0", "hidden_norm=True_area_range=_0.5_1.0",
      "hidden_norm=False_area_range=_0.3_1.0", "hidden_norm=False_area_range=_0.5_1.0"]
  assert all(s.workdir == os.path.join(tmp_path, s.name) for s in specs)
  assert specs[1].args[3:] == ("--config.loss.hidden_norm=True",
                               "--config.augment.area_range=(0.5,1.0)",
                               "--config.model.width_multiplier=0.125")


def test_same_leaf_names_use_the_whole_path():
  points = grid.grid_points([grid.parse_axis("optim.base_lr=0.1"),
                             grid.parse_axis("linear_eval.optim.base_lr=1")])
  assert points[0].name == "optim.base_lr=0.1_linear_eval.optim.base_lr=1"


def test_command_line_flags_choose_the_study():
  study, axes, ops = sweep.choose_study(None, [], "32,64", None, None)
  assert study.name == "batch_epochs" and axes == [grid.Axis("batch_size", ("32", "64"))]
  study, axes, _ = sweep.choose_study(None, ["loss.temperature=0.1,1"], None, None, None)
  assert study.name == "grid" and study.figure == "grid.png"
  study, _, ops = sweep.choose_study("figure5", [], None, None, "sobel,crop")
  assert study.name == "figure5" and ops == ["crop", "sobel"]
  for args, message in [((None, ["seed=1"], "32", None, None), "--batch_sizes sets an axis"),
                        (("temperature", [], None, "5", None), "--epochs sets an axis"),
                        (("figure5", [], None, None, "crop,zoom"), r"\['zoom'\] not among"),
                        (("head", ["seed=1", "seed=2"], None, None, None),
                         r"a field is given twice \(seed, seed\)")]:
    with pytest.raises(ValueError, match=message):
      sweep.choose_study(*args)
  with pytest.raises(ValueError, match="not an axis of study 'temperature'"):
    studies.study_points(studies.STUDIES["temperature"], [grid.parse_axis("seed=1,2")])
  with pytest.raises(ValueError, match="--study_ops is for --study=figure5"):
    studies.study_points(studies.STUDIES["head"], ops=["crop"])


# --- named studies ------------------------------------------------------------------------

def test_figure5_pairs_apply_the_operators_to_view_1_only():
  ops = studies.parse_ops("crop,cutout,colour,sobel")
  points, fields = studies.study_points(studies.STUDIES["figure5"], ops=ops)
  assert fields == []
  assert len(points) == 10  # 4 diagonal + 6 pairs
  assert [p.name for p in points[:5]] == ["crop", "crop+cutout", "crop+colour", "crop+sobel",
                                          "cutout"]
  assert {(p.columns["op1"], p.columns["op2"]) for p in points} == {
      (a, b) for i, a in enumerate(ops) for b in ops[i:]}
  view2 = {f: t for f, t in points[0].overrides.items() if f.startswith("augment.view2.")}
  # View 2 is the identity in every run: no crop, flip, colour, blur, cutout, ...
  assert all(p.overrides[f] == t for p in points for f, t in view2.items())
  assert view2 == {"augment.view2.crop": "False", "augment.view2.flip": "False",
                   "augment.view2.color_jitter_prob": "0",
                   "augment.view2.grayscale_prob": "0", "augment.view2.blur_prob": "0",
                   "augment.view2.cutout_prob": "0", "augment.view2.rotate_prob": "0",
                   "augment.view2.sobel_prob": "0", "augment.view2.noise_prob": "0"}
  by_name = {p.name: p.overrides for p in points}
  identity = {**studies.IDENTITY}
  assert by_name["sobel"] == {**identity, "augment.sobel_prob": "1.0"}
  assert by_name["crop+colour"] == {**identity, "augment.crop": "True",
                                    "augment.color_jitter_prob": "0.8",
                                    "augment.grayscale_prob": "0.2"}
  assert by_name["cutout"]["augment.crop"] == "False"  # no crop unless studied
  every = studies.study_points(studies.STUDIES["figure5"])[0]
  assert len(every) == 7 * 8 // 2
  assert by_name.keys() <= {p.name for p in every}


def test_head_study_runs_no_head_once():
  axes = [grid.parse_axis("model.proj_dim=32,128")]
  points, fields = studies.study_points(studies.STUDIES["head"], axes)
  assert [p.name for p in points] == ["head_mode=none", "head_mode=linear_proj_dim=32",
                                      "head_mode=linear_proj_dim=128",
                                      "head_mode=nonlinear_proj_dim=32",
                                      "head_mode=nonlinear_proj_dim=128"]
  assert points[0].overrides == {"model.head_mode": "none"}
  assert fields == ["model.head_mode", "model.proj_dim"]


def test_temperature_and_colour_studies_default_to_the_papers_grids(tmp_path):
  points, _ = studies.study_points(studies.STUDIES["temperature"])
  assert len(points) == 8 and points[0].overrides == {"loss.hidden_norm": "True",
                                                      "loss.temperature": "0.05"}
  specs = grid.plan(sweep_config(), "c.py", {}, points, str(tmp_path),
                    ["loss.hidden_norm", "loss.temperature"])
  assert specs[-1].columns == {"loss.hidden_norm": False, "loss.temperature": 1.0}
  points, _ = studies.study_points(studies.STUDIES["colour_strength"])
  assert [p.overrides["augment.color_strength"] for p in points] == ["0.125", "0.25", "0.5",
                                                                     "1.0"]


# --- planning the batch_epochs study (today's --batch_sizes/--epochs) --------------------

def test_plan_runs_each_grid_point_in_its_own_workdir(tmp_path):
  specs = make_plan(tmp_path)
  assert [(s.columns["batch_size"], s.columns["num_epochs"]) for s in specs] == [
      (32, 1.0), (256, 1.0), (32, 2.5), (256, 2.5)]
  assert [s.name for s in specs] == ["b32_e1", "b256_e1", "b32_e2.5", "b256_e2.5"]
  assert all(os.path.dirname(s.workdir) == str(tmp_path) for s in specs)
  args = specs[2].args
  assert args[0] == grid.MAIN
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
  specs = make_plan(tmp_path, batch_sizes=("32", "256", "1024"), epochs=("1",),
                    **{"optim.lr_scaling": scaling})
  assert {s.columns["batch_size"]: s.peak_lr for s in specs} == pytest.approx(expected)
  # The LR itself is not passed: each run scales config.optim.base_lr by its batch.
  assert not any("learning_rate" in a or "base_lr" in a for s in specs for a in s.args)


@pytest.mark.parametrize("overrides,changes,message", [
    ({"batch_size": 64}, {}, "--config.batch_size is set by the sweep's runs"),
    ({"num_epochs": 3}, {}, "--config.num_epochs is set by the sweep's runs"),
    ({}, {"num_train_steps": 100}, "num_train_steps = 100 would override"),
    ({}, {"evals.linear_probes.every_steps": -1},
     "config.evals.linear_probes.every_steps >= 0"),
    ({}, {"num_epochs": 10}, "num_epochs is an int field: write it as a float"),
    ({}, {"loss.temperature": 0.0}, "config.loss.temperature = 0.0"),
])
def test_plan_rejects_settings_the_sweep_cannot_honour(tmp_path, overrides, changes,
                                                       message):
  with pytest.raises(ValueError, match=message):
    make_plan(tmp_path, overrides=overrides, **changes)


def test_plan_checks_each_runs_config(tmp_path):
  points = grid.grid_points([grid.parse_axis("augment.area_range=(0.5, 1.0),x")])
  with pytest.raises(ValueError, match=r"config.augment.area_range = \('x',\) is not "
                     r"allowed: expected a pair"):
    grid.plan(sweep_config(), "c.py", {}, points, str(tmp_path))


def test_integral_epochs_work_with_an_int_num_epochs_field(tmp_path):
  specs = make_plan(tmp_path, epochs=("1", "3"), **{"num_epochs": 10})
  assert "--config.num_epochs=3" in specs[-1].args and specs[-1].columns["num_epochs"] == 3


# --- skip and resume ----------------------------------------------------------------------

def test_finished_runs_are_skipped_and_interrupted_ones_resumed(tmp_path):
  specs = make_plan(tmp_path)
  runner = FakeMain(crash_once={(256, 2.5)})
  outcome = runs.execute(specs, runner, python="py")
  assert [outcome[s.workdir] for s in specs] == ["finished"] * 3 + ["failed"]
  assert runner.calls == [(32, 1.0, False), (256, 1.0, False), (32, 2.5, False),
                          (256, 2.5, False)]
  assert [runs.is_finished(s.workdir) for s in specs] == [True, True, True, False]

  runner.calls.clear()
  outcome = runs.execute(specs, runner, python="py")
  assert [outcome[s.workdir] for s in specs] == ["skipped"] * 3 + ["finished"]
  assert runner.calls == [(256, 2.5, True)]  # only the unfinished run, from its checkpoint

  runner.calls.clear()
  outcome = runs.execute(specs, runner, python="py")
  assert set(outcome.values()) == {"skipped"} and runner.calls == []

  record = json.load(open(os.path.join(specs[3].workdir, runs.RUN_FILE)))
  assert [i["returncode"] for i in record["invocations"]] == [137, 0]
  assert record["args"] == list(specs[3].args)


def test_the_runner_gets_the_interpreter_and_main_py_arguments(tmp_path):
  seen = []
  spec = make_plan(tmp_path, batch_sizes=("64",), epochs=("1",))[0]
  runs.execute([spec], lambda argv, log: seen.append((argv, log)) or 1, python="/x/python")
  (argv, log), = seen
  assert argv == ["/x/python", *spec.args]
  assert log == os.path.join(spec.workdir, runs.LOG_FILE)


def test_stop_on_error(tmp_path):
  specs = make_plan(tmp_path)
  runner = FakeMain(crash_once={(32, 1.0)})
  outcome = runs.execute(specs, runner, python="py", stop_on_error=True)
  assert outcome == {specs[0].workdir: "failed"}


def test_a_workdir_started_with_other_settings_is_refused_before_any_run(tmp_path):
  spec = make_plan(tmp_path, batch_sizes=("64",), epochs=("1",))[0]
  runs.execute([spec], FakeMain(), python="py")  # finished
  first, other = make_plan(tmp_path, batch_sizes=("32", "64"), epochs=("1",),
                           overrides={"model.width_multiplier": 0.5})
  assert other.workdir == spec.workdir
  runner = FakeMain()
  with pytest.raises(ValueError, match="was started with different arguments"):
    runs.execute([first, other], runner, python="py")
  assert runner.calls == [] and not os.path.exists(first.workdir)


# --- collection: CSV, Markdown, figures ---------------------------------------------------

def _read_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  from matplotlib import image  # pylint: disable=g-import-not-at-top
  return image.imread(path)


def test_results_csv_md_and_png_from_the_runs_metrics(tmp_path):
  specs = make_plan(tmp_path, batch_sizes=("32", "64", "128"), epochs=("1", "2"))
  runs.execute(specs[:-1], FakeMain(), python="py")  # b128_e2 never ran
  runs.execute(specs[1:2], FakeMain(), python="py")  # skipped: adds no invocation
  rows = sweep.collect(specs, studies.STUDIES["batch_epochs"], str(tmp_path), "test")

  table = report.read_csv(os.path.join(tmp_path, "results.csv"))
  assert list(table[0])[:2 + len(report.METRIC_COLUMNS)] == [
      "num_epochs", "batch_size", *report.METRIC_COLUMNS]
  assert [r["batch_size"] for r in table] == ["32", "64", "128", "32", "64", "128"]
  assert [r["run"] for r in table] == [s.name for s in specs]
  assert {"linear_probe_5shot_top1", "random_init_linear_probe_top1"} <= set(table[0])
  assert [r["status"] for r in table] == ["finished"] * 5 + ["missing"]
  assert table[-1]["linear_probe_top1"] == "" and table[-1]["images_per_s"] == ""
  for row, spec in zip(table[:5], specs[:5]):
    b, e = spec.columns["batch_size"], spec.columns["num_epochs"]
    steps = round(e * (NUM_TRAIN // b))
    assert int(row["steps"]) == steps and float(row["num_epochs"]) == e
    assert float(row["linear_probe_top1"]) == pytest.approx(0.8 + b / 10000 + e / 100)
    assert float(row["eval_probe_top1"]) == pytest.approx(0.5 + b / 1000)
    assert float(row["final_loss"]) == pytest.approx(4.0)
    assert float(row["peak_lr"]) == pytest.approx(0.8 * b / 256)
    # The median window after the first (compilation) one.
    assert float(row["images_per_s"]) == pytest.approx(
        np.median([b * 2.0 + s % 3 for s in range(2, steps + 1)]))
    assert float(row["wall_minutes"]) == 1.5
    assert float(row["sweep_wall_minutes"]) >= 0
    assert len(json.load(open(os.path.join(spec.workdir, runs.RUN_FILE)))[
        "invocations"]) == 1
  assert rows[0]["batch_size"] == 32 and rows[0]["status"] == "finished"

  markdown = open(os.path.join(tmp_path, "results.md")).read()
  assert markdown.startswith("# Figure 9 (batch size x training epochs): test")
  assert "| b64_e2 | 2 | 64 | finished | 82.6 |" in markdown  # 0.8 + 64/1e4 + 2/100
  assert "Random-init encoder, same linear probe: 30.0% top-1." in markdown
  pixels = _read_png(os.path.join(tmp_path, "scaling.png"))
  assert pixels.shape[0] > 300 and pixels.shape[1] > 800
  assert pixels[..., :3].std() > 0.05  # something was drawn


def test_interrupted_run_is_reported_failed_then_unfinished(tmp_path):
  spec = make_plan(tmp_path, batch_sizes=("64",), epochs=("2",))[0]
  runs.execute([spec], FakeMain(crash_once={(64, 2.0)}), python="py")
  row = runs.summarize(spec)
  assert row["status"] == "failed (exit 137)" and "linear_probe_top1" not in row
  os.remove(os.path.join(spec.workdir, runs.RUN_FILE))  # e.g. main.py run by hand
  assert runs.summarize(spec)["status"] == "unfinished"
  assert row["steps"] == round(2.0 * (NUM_TRAIN // 64)) // 2  # the torn line is ignored


def _synthetic_rows(points):
  """Rows as summarize writes them, with an accuracy that differs per run."""
  rows = []
  for i, point in enumerate(points):
    values = {}
    for field, text in point.overrides.items():
      try:
        values[field] = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        values[field] = text
    rows.append({**point.columns, **values, "run": point.name, "status": "finished",
                 "steps": 10 + i, runs.FINAL_KEY: 0.5 + 0.01 * i,
                 "eval_probe_top1": 0.4 + 0.01 * i, "final_contrast_acc": 0.9 - 0.01 * i,
                 "final_loss": 2.0, "images_per_s": 100.0 + i,
                 "random_init_linear_probe_top1": 0.25})
  return rows


@pytest.mark.parametrize("name", [*studies.STUDIES, "grid"])
def test_each_study_writes_its_figure_and_markdown(tmp_path, name):
  if name == "grid":
    axes = [grid.parse_axis("loss.hidden_norm=True,False"),
            grid.parse_axis("model.head_mode=linear,nonlinear")]
    study = studies.grid_study(axes)
  else:
    study, axes = studies.STUDIES[name], ()
  ops = ["crop", "colour", "blur"] if name == "figure5" else ()
  points, fields = studies.study_points(study, axes, ops)
  rows = _synthetic_rows(points)
  columns = [*points[-1].columns, *fields]
  study.plot(rows, os.path.join(tmp_path, study.figure), "title")
  report.write_markdown(rows, columns, os.path.join(tmp_path, "results.md"), "title",
                        study.sections(rows))
  pixels = _read_png(os.path.join(tmp_path, study.figure))
  assert pixels.shape[0] > 300 and pixels[..., :3].std() > 0.05
  assert os.path.getsize(os.path.join(tmp_path, study.figure)) > 10_000
  markdown = open(os.path.join(tmp_path, "results.md")).read()
  for row in rows:  # every run's line with its accuracy
    assert f"| {row['run']} |" in markdown
    assert f"| {100 * row[runs.FINAL_KEY]:.1f} |" in markdown
  if name == "figure5":
    # The matrix: crop row = crop, crop+colour, crop+blur (runs 0, 1, 2), their mean.
    assert "| crop | 50.0 | 51.0 | 52.0 | 51.0 |" in markdown
    assert "| blur | 52.0 | 54.0 | 55.0 | 53.7 |" in markdown  # symmetric


# --- end to end ---------------------------------------------------------------------------

@pytest.mark.slow
def test_real_sweep_end_to_end_then_rerun_skips(tmp_path):
  """python -m tools.sweep: the temperature study cut to 2 tiny runs of 3 steps; CSV,
  Markdown and PNG; a re-run skips both; a bad --grid value is one line, exit 2."""
  sweep_dir = str(tmp_path / "sweep")
  command = [sys.executable, "-m", "tools.sweep", "--config=configs/digits_sweep.py",
             f"--sweep_dir={sweep_dir}", "--study=temperature",
             "--grid", "loss.temperature=0.3", "--grid", "loss.hidden_norm=True,False",
             "--config.num_train_steps=3", "--config.model.width_multiplier=0.125",
             "--config.data.image_size=16", "--config.batch_size=32",
             "--config.model.proj_dim=16", "--config.evals.linear_probes.draws=1",
             "--config.evals.linear_probes.random_init_baseline=False"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")

  def run(*extra, returncode=0):
    proc = subprocess.run([*command, *extra], env=env, capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == returncode, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc

  run()
  table = report.read_csv(os.path.join(sweep_dir, "results.csv"))
  assert [(r["loss.hidden_norm"], r["loss.temperature"], r["status"]) for r in table] == [
      ("True", "0.3", "finished"), ("False", "0.3", "finished")]
  for r in table:
    assert int(r["steps"]) == 3
    assert 0.0 <= float(r["linear_probe_top1"]) <= 1.0
    assert float(r["images_per_s"]) > 0 and np.isfinite(float(r["final_loss"]))
  assert os.path.getsize(os.path.join(sweep_dir, "temperature.png")) > 10_000
  assert "| hidden_norm=False_temperature=0.3 | False | 0.3 | finished |" in open(
      os.path.join(sweep_dir, "results.md")).read()
  for r, norm in zip(table, (True, False)):
    with open(os.path.join(sweep_dir, r["run"], "config_pretrain.json")) as f:
      saved = json.load(f)
    assert saved["loss"]["hidden_norm"] is norm and saved["loss"]["temperature"] == 0.3
    assert saved["model"]["proj_dim"] == 16  # the overrides reach every run

  workdirs = [os.path.join(sweep_dir, r["run"]) for r in table]
  mtimes = {w: os.path.getmtime(os.path.join(w, "metrics.jsonl")) for w in workdirs}
  proc = run()
  assert "finished before, skipped" in proc.stderr
  for workdir, mtime in mtimes.items():
    assert os.path.getmtime(os.path.join(workdir, "metrics.jsonl")) == mtime
    with open(os.path.join(workdir, runs.RUN_FILE)) as f:
      assert len(json.load(f)["invocations"]) == 1

  proc = subprocess.run([*command[:5], "--grid", "loss.temperature=0.1,abc"], env=env,
                        capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 2 and proc.stderr.splitlines() == [
      "error: --grid loss.temperature: 'abc' is not allowed: expected a number (could not "
      "convert string to float: 'abc')"]
