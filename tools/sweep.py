r"""Sweeps of `main.py` pretraining runs: any grid of config fields, or a named study.

  python -m tools.sweep --config=configs/digits_sweep.py --sweep_dir=workdirs/t \
      --study=temperature [--grid 'loss.temperature=0.1,0.5'] [--config.<field>=<value>]
  python -m tools.sweep --config=... --sweep_dir=... \
      --grid 'augment.color_strength=0.25,0.5,1.0' --grid 'loss.hidden_norm=True,False'
  python -m tools.sweep --config=... --sweep_dir=... --batch_sizes=32,64 --epochs=5,15

Every run is `main.py` (pretraining, then the final linear probes) in its own workdir
`<sweep_dir>/<run>`, named from its varied values; then `<sweep_dir>/results.csv` (a
row per run, a column per varied field), `results.md` and the study's figure are
written. Several --grid axes make their product; values are parsed as
`--config.<field>=<value>` would be. Studies (tools/studies.py): figure5
(--study_ops=crop,colour,... picks operators), colour_strength, temperature, head,
batch_epochs (the default; --batch_sizes/--epochs set its axes). Running the same
command again skips finished runs and resumes unfinished ones; a run directory started
with other arguments is refused.
"""

import os
import shlex
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from simclr_jax import user_errors
from simclr_jax.config_lib import ConfigError
from tools import grid
from tools import report
from tools import runs
from tools import studies

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Base config file; --config.<field>=<value> overrides go to every run.",
    lock_config=True)
_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "Parent directory of the runs.")
_GRID = flags.DEFINE_multi_string(
    "grid", [], "<field>=<v1>,<v2>,...: an axis of the grid (repeat for their product); "
    "with --study, replaces that study axis's values.")
_STUDY = flags.DEFINE_enum("study", None, list(studies.STUDIES),
                           "A named study (default: batch_epochs unless --grid is given).")
_STUDY_OPS = flags.DEFINE_string("study_ops", None,
                                 "figure5's operators, e.g. crop,cutout,colour,sobel.")
_BATCH_SIZES = flags.DEFINE_string("batch_sizes", None,
                                   "batch_epochs: global batch sizes (default 32,64,128,256).")
_EPOCHS = flags.DEFINE_string("epochs", None, "batch_epochs: epoch budgets (default 5,15).")
_PYTHON = flags.DEFINE_string("python", sys.executable, "Interpreter that runs main.py.")
_STOP_ON_ERROR = flags.DEFINE_bool("stop_on_error", False,
                                   "Stop at the first failed run (default: go on).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the runs' commands and exit.")
_COLLECT_ONLY = flags.DEFINE_bool("collect_only", False,
                                  "Only rebuild results.csv, results.md and the figure.")


def choose_study(study: str | None, grid_texts, batch_sizes: str | None,
                 epochs: str | None, ops: str | None):
  """(Study, its --grid axes, figure5 operators) from the flags; ValueError if they
  do not fit together."""
  axes = [grid.parse_axis(text) for text in grid_texts]
  name = study or ("grid" if axes else "batch_epochs")
  for flag, text, field in (("batch_sizes", batch_sizes, "batch_size"),
                            ("epochs", epochs, "num_epochs")):
    if text is not None:
      if name != "batch_epochs":
        raise ValueError(f"--{flag} sets an axis of --study=batch_epochs; with --grid or "
                         f"another study use --grid '{field}=...'")
      axes.append(grid.parse_axis(f"{field}={text}"))
  fields = [a.field for a in axes]
  if len(set(fields)) != len(fields):
    raise ValueError(f"--grid: a field is given twice ({', '.join(fields)})")
  chosen = studies.grid_study(axes) if name == "grid" else studies.STUDIES[name]
  return chosen, axes, studies.parse_ops(ops) if ops is not None else []


def collect(specs, study: studies.Study, sweep_dir: str, title: str) -> list[dict]:
  """results.csv, results.md and the study's figure from every run's metrics.jsonl."""
  rows = [runs.summarize(spec) for spec in specs]
  columns = list(dict.fromkeys(c for spec in specs for c in spec.columns))
  report.write_csv(rows, columns, os.path.join(sweep_dir, "results.csv"))
  report.write_markdown(rows, columns, os.path.join(sweep_dir, "results.md"),
                        f"{study.paper}: {title}", study.sections(rows))
  study.plot(rows, os.path.join(sweep_dir, study.figure), title)
  return rows


def main(argv):
  if len(argv) > 1:
    user_errors.exit_with(ConfigError(f"unexpected arguments: {argv[1:]}"))
  if not _SWEEP_DIR.value:
    user_errors.exit_with(ConfigError("--sweep_dir is required"))
  config_file = config_flags.get_config_filename(flags.FLAGS["config"])
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  try:
    study, axes, ops = choose_study(_STUDY.value, _GRID.value, _BATCH_SIZES.value,
                                    _EPOCHS.value, _STUDY_OPS.value)
    points, axis_fields = studies.study_points(study, axes, ops)
    specs = grid.plan(_CONFIG.value, config_file, overrides, points, _SWEEP_DIR.value,
                      axis_fields)
    runs.check_not_changed(specs)
  except ValueError as e:  # ConfigError included
    user_errors.exit_with(e)
  if _DRY_RUN.value:
    for spec in specs:
      print(shlex.join([_PYTHON.value, *spec.args]))
    return
  os.makedirs(_SWEEP_DIR.value, exist_ok=True)
  outcome = {}
  if not _COLLECT_ONLY.value:
    outcome = runs.execute(specs, python=_PYTHON.value, stop_on_error=_STOP_ON_ERROR.value)
  title = " ".join([config_file, *(f"--config.{k}={grid.format_value(v)}"
                                   for k, v in sorted(overrides.items()))])
  rows = collect(specs, study, _SWEEP_DIR.value, title)
  width = max(len(spec.name) for spec in specs) + 2
  print(f"{'run':<{width}}{'status':<12}{runs.FINAL_KEY:>20}{'images/s':>12}")
  for r in rows:
    acc, rate = r.get(runs.FINAL_KEY), r.get("images_per_s")
    print(f"{r['run']:<{width}}{r['status']:<12}{'' if acc is None else f'{acc:.4f}':>20}"
          f"{'' if rate is None else f'{rate:.1f}':>12}")
  print(f"wrote {os.path.join(_SWEEP_DIR.value, 'results.csv')}, results.md and "
        f"{study.figure}")
  failed = [w for w, status in outcome.items() if status == "failed"]
  if failed:
    raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=user_errors.parse_flags)
