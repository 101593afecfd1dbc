"""A sweep's runs: grid axes parsed like `--config.<field>=<value>`, one workdir per run.

A run is a `Point`: the config overrides it adds to the sweep's own (field -> the text
passed to main.py), its name (its workdir's), and study columns (e.g. figure5's
operators). `plan` checks every run's config before anything starts.
"""

import dataclasses
import itertools
import os
import re
from typing import Sequence

import ml_collections
from ml_collections.config_flags import config_flags
from ml_collections.config_flags import config_path

from simclr_jax import config_lib
from simclr_jax import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")
_UNSAFE = re.compile(r"[^A-Za-z0-9.+=-]+")


@dataclasses.dataclass(frozen=True)
class Axis:
  field: str  # dotted config path, e.g. "loss.temperature"
  texts: tuple[str, ...]  # the values as written, e.g. ("0.1", "0.5")


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep, before its config is checked."""
  name: str
  overrides: dict  # field -> text, in order
  columns: dict = dataclasses.field(default_factory=dict)  # study labels, e.g. op1/op2


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of a sweep, checked."""
  name: str
  workdir: str
  columns: dict  # CSV columns that identify the run (varied fields, study labels)
  peak_lr: float
  args: tuple[str, ...]  # main.py's arguments (no interpreter)


def split_values(text: str) -> list[str]:
  """'0.1,(0.2, 0.3),x' -> ['0.1', '(0.2, 0.3)', 'x']: commas inside brackets or
  quotes do not split."""
  items, depth, quote, current = [], 0, "", ""
  for char in text:
    if quote:
      quote = "" if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      items.append(current.strip())
      current = ""
      continue
    current += char
  items.append(current.strip())
  return items


def parse_axis(text: str) -> Axis:
  """'augment.color_strength=0.25,0.5,1.0' -> Axis; values are checked by `plan`."""
  field, sep, values = text.partition("=")
  field = field.strip().removeprefix("config.")
  if not sep or not re.fullmatch(r"\w+(\.\w+)*", field):
    raise ValueError(f"--grid {text!r}: expected <field>=<value>,<value>,... "
                     "(e.g. --grid 'loss.temperature=0.1,0.5')")
  texts = split_values(values)
  if any(not t for t in texts):
    raise ValueError(f"--grid {field}: empty value in {values!r}")
  if len(set(texts)) != len(texts):
    raise ValueError(f"--grid {field}: duplicate values in {values!r}")
  return Axis(field, tuple(texts))


def parse_value(config: ml_collections.ConfigDict, field: str, text: str):
  """`text` parsed as `--config.<field>=<text>` would be, by the field's type."""
  try:
    field_type = config_path.get_type(field, config)
  except (AttributeError, KeyError):
    raise ValueError(f"{field}: no such config field") from None
  # ml_collections' own table of override parsers (private, but what main.py applies).
  parser = config_flags._FIELD_TYPE_TO_PARSER.get(field_type)  # pylint: disable=protected-access
  if parser is None:
    raise ValueError(f"{field}: a {field_type.__name__} field cannot be set from the "
                     "command line")
  try:
    return parser.parse(text)
  except (ValueError, TypeError, SyntaxError) as e:
    expected = {int: "an integer", float: "a number", bool: "True or False",
                tuple: "a tuple, e.g. '(0.1, 0.9)'"}.get(field_type, field_type.__name__)
    if field_type is int and re.fullmatch(r"[-+.\deE]+", text):
      expected += (f" (config.{field} is an int field: write it as a float, e.g. 15.0, "
                   "in the config file to allow fractions)")
    raise ValueError(f"--grid {field}: {text!r} is not allowed: expected {expected} "
                     f"({e.args[0] if e.args else e})") from None


def format_value(value) -> str:
  """The text main.py parses back to `value` (floats as short as exact)."""
  if isinstance(value, float) and float(f"{value:g}") == value:
    return f"{value:g}"
  return str(value)


def safe_name(text: str) -> str:
  """A directory name from a run label: anything but letters, digits and . + = - is _."""
  return _UNSAFE.sub("_", text).strip("_") or "run"


def grid_points(axes: Sequence[Axis]) -> list[Point]:
  """The product of the axes, the first the outermost; names from the varied values."""
  leaves = [a.field.rsplit(".", 1)[-1] for a in axes]
  labels = leaves if len(set(leaves)) == len(leaves) else [a.field for a in axes]
  points = []
  for texts in itertools.product(*(a.texts for a in axes)):
    name = "_".join(f"{label}={text}" for label, text in zip(labels, texts))
    points.append(Point(safe_name(name), dict(zip((a.field for a in axes), texts))))
  return points


def _set(config: ml_collections.ConfigDict, field: str, value) -> None:
  config.update_from_flattened_dict({field: value})


def check_sweep_config(config: ml_collections.ConfigDict) -> None:
  """The sweep reports the final linear probes of pretraining runs."""
  every = config.evals.linear_probes.every_steps if "evals" in config else None
  if config.mode != "pretrain" or every is None or every < 0:
    raise ValueError("the sweep needs config.mode = 'pretrain' and "
                     "config.evals.linear_probes.every_steps >= 0 (0: at the end) "
                     f"(got {config.mode!r}, {every}): the final linear probes are the "
                     "accuracy it reports")


def plan(config: ml_collections.ConfigDict, config_file: str, overrides: dict,
         points: Sequence[Point], sweep_dir: str,
         column_fields: Sequence[str] = ()) -> list[RunSpec]:
  """The runs, in order, each run's config checked with config_lib.validate.

  Args:
    config: the base config with `overrides` applied (what every run starts from).
    config_file: path of the base config file, passed to main.py.
    overrides: {"model.width_multiplier": 0.125, ...}, passed to every run.
    points: the runs (their own overrides as text).
    sweep_dir: parent of the runs' workdirs.
    column_fields: fields that are CSV columns even when only one value is swept
      (a grid's axes); fields whose value differs between runs always are.
  """
  check_sweep_config(config)
  fields = list(dict.fromkeys(f for p in points for f in p.overrides))
  for field in fields:
    if field in overrides:
      raise ValueError(f"--config.{field} is set by the sweep's runs; drop it (or sweep it "
                       f"with --grid '{field}=...')")
  if "num_epochs" in fields and config.num_train_steps > 0:
    raise ValueError(f"config.num_train_steps = {config.num_train_steps} would override the "
                     "runs' num_epochs; set it to -1")
  names = [p.name for p in points]
  if len(set(names)) != len(names):
    raise ValueError(f"two runs would share a directory: {names}")
  parsed = [{f: parse_value(config, f, t) for f, t in p.overrides.items()} for p in points]
  varied = [f for f in fields if f in column_fields
            or len({repr(values.get(f)) for values in parsed}) > 1]
  specs = []
  for point, values in zip(points, parsed):
    run_config = config.copy_and_resolve_references()
    for field, value in values.items():
      try:
        _set(run_config, field, value)
      except TypeError as e:
        raise ValueError(f"{field} = {point.overrides[field]!r} is not allowed: {e}") from None
    config_lib.validate(run_config)
    workdir = os.path.join(sweep_dir, point.name)
    args = (MAIN, f"--config={config_file}", f"--workdir={workdir}",
            *(f"--config.{f}={t}" for f, t in point.overrides.items()),
            *(f"--config.{k}={format_value(v)}" for k, v in sorted(overrides.items())))
    peak_lr = optim.scaled_learning_rate(run_config.optim.base_lr, run_config.batch_size,
                                         run_config.optim.lr_scaling)
    columns = {**point.columns, **{f: values.get(f) for f in varied}}
    specs.append(RunSpec(point.name, workdir, columns, peak_lr, args))
  return specs
