"""Named studies: the paper's ablations as sweeps (`python -m tools.sweep --study=NAME`).

A study is its runs (grid axes, or a function of them) and how to draw them. `--grid`
axes on a study's own fields replace that axis's values (e.g. `--study=temperature
--grid loss.temperature=0.1,0.5`).
"""

import dataclasses
import functools
from typing import Callable, Optional, Sequence

from tools import report
from tools.grid import Axis, Point, format_value, grid_points, safe_name

# Figure 5's operators, in the paper's order, and the view-1 overrides that turn each on.
# Every operator is applied always except colour, which is the paper's colour
# distortion (jitter with p = 0.8, then grayscale with p = 0.2, the config's strength).
# Crop is crop-and-resize alone (flip is not one of the seven).
FIGURE5_OPS = ("crop", "cutout", "colour", "sobel", "noise", "blur", "rotate")
OPERATORS = {
    "crop": {"augment.crop": "True"},
    "cutout": {"augment.cutout_prob": "1.0"},
    "colour": {"augment.color_jitter_prob": "0.8", "augment.grayscale_prob": "0.2"},
    "sobel": {"augment.sobel_prob": "1.0"},
    "noise": {"augment.noise_prob": "1.0"},
    "blur": {"augment.blur": "True", "augment.blur_prob": "1.0"},
    "rotate": {"augment.rotate_prob": "1.0"},
}
# Figure 5's protocol: both views start as the identity (the whole image resized, no
# flip, colour, blur, ...); the studied operators then go to view 1 only. A blur on one
# view only runs in tf.data (the train step's blur treats both views alike).
_OFF = {"crop": "False", "flip": "False", "color_jitter_prob": "0", "grayscale_prob": "0",
        "blur_prob": "0", "cutout_prob": "0", "rotate_prob": "0", "sobel_prob": "0",
        "noise_prob": "0"}
IDENTITY = {**{f"augment.{k}": v for k, v in _OFF.items()}, "augment.blur": "False",
            "augment.blur_on": "data", **{f"augment.view2.{k}": v for k, v in _OFF.items()}}


@dataclasses.dataclass(frozen=True)
class Study:
  name: str
  paper: str  # the figure or table it reproduces
  axes: tuple[Axis, ...]  # default values; --grid replaces an axis's values
  # (rows, path, title) -> None: the figure, written to <sweep_dir>/<figure>.
  plot: Callable[[Sequence[dict], str, str], None]
  figure: str
  # The runs from the axes (and --study_ops); default: the axes' product.
  points: Optional[Callable[[Sequence[Axis], Sequence[str]], list[Point]]] = None
  sections: Callable[[Sequence[dict]], list[str]] = lambda rows: []  # extra Markdown


def parse_ops(text: str) -> list[str]:
  """'crop,colour' -> ['crop', 'colour'] in Figure 5's order; names checked."""
  ops = [op.strip() for op in text.split(",") if op.strip()]
  unknown = [op for op in ops if op not in OPERATORS]
  if unknown or not ops:
    raise ValueError(f"--study_ops={text!r}: {unknown or 'no operator'} not among "
                     f"{list(FIGURE5_OPS)}")
  return [op for op in FIGURE5_OPS if op in ops]


def figure5_points(axes: Sequence[Axis], ops: Sequence[str]) -> list[Point]:
  """Every unordered pair of `ops` (the pipeline's order of operators is fixed, so
  (a, b) and (b, a) are one run); the diagonal is one operator alone."""
  del axes  # figure5 has none
  points = []
  for i, first in enumerate(ops):
    for second in ops[i:]:
      overrides = {**IDENTITY, **OPERATORS[first], **OPERATORS[second]}
      name = first if first == second else f"{first}+{second}"
      points.append(Point(name, overrides, {"op1": first, "op2": second}))
  return points


def _ops_in(rows: Sequence[dict]) -> list[str]:
  present = {row.get(k) for row in rows for k in ("op1", "op2")}
  return [op for op in FIGURE5_OPS if op in present]


def _short(text: str) -> str:
  try:
    return format_value(float(text))
  except ValueError:
    return text


def batch_epochs_points(axes: Sequence[Axis], ops: Sequence[str]) -> list[Point]:
  """Epochs-major, named b{B}_e{E} (e.g. b256_e15)."""
  del ops
  return [Point(safe_name(f"b{p.overrides['batch_size']}_e{_short(p.overrides['num_epochs'])}"),
                p.overrides) for p in grid_points(axes)]


def head_points(axes: Sequence[Axis], ops: Sequence[str]) -> list[Point]:
  """head_mode x proj_dim, but one run without a head (z = h: no output dim to vary)."""
  del ops
  points = []
  for point in grid_points(axes):
    if point.overrides.get("model.head_mode") == "none":
      if any(p.overrides.get("model.head_mode") == "none" for p in points):
        continue
      point = Point("head_mode=none", {"model.head_mode": "none"})
    points.append(point)
  return points


_ACCURACY = (report.FINAL_KEY, "linear probe top-1 on the test split (%)", 100)
STUDIES = {s.name: s for s in (
    Study("figure5", "Figure 5 (pairs of augmentations, applied to one view)", (),
          functools.partial(report.plot_heatmap, ops=_ops_in), "figure5.png",
          points=figure5_points,
          sections=lambda rows: [report.matrix_table(rows, _ops_in(rows))]),
    Study("colour_strength", "Table 1 / Figure 6 (colour distortion strength)",
          (Axis("augment.color_strength", ("0.125", "0.25", "0.5", "1.0")),),
          functools.partial(report.plot_lines, x="augment.color_strength", log_x=2),
          "colour_strength.png"),
    Study("temperature", "Table 5 (temperature, with and without l2-normalised z)",
          (Axis("loss.hidden_norm", ("True", "False")),
           Axis("loss.temperature", ("0.05", "0.1", "0.5", "1.0"))),
          functools.partial(report.plot_lines, x="loss.temperature",
                            series=("loss.hidden_norm",), log_x=10,
                            panels=(_ACCURACY, ("final_contrast_acc",
                                                "contrastive accuracy, last window (%)",
                                                100))),
          "temperature.png"),
    Study("head", "Figure 8 (projection head and its output dimension)",
          (Axis("model.head_mode", ("none", "linear", "nonlinear")),
           Axis("model.proj_dim", ("32", "64", "128", "256", "512", "1024", "2048"))),
          functools.partial(report.plot_bars, x="model.proj_dim", series="model.head_mode"),
          "head.png", points=head_points),
    Study("batch_epochs", "Figure 9 (batch size x training epochs)",
          (Axis("num_epochs", ("5", "15")), Axis("batch_size", ("32", "64", "128", "256"))),
          functools.partial(report.plot_lines, x="batch_size", series=("num_epochs",),
                            log_x=2, panels=(_ACCURACY, ("images_per_s",
                                                         "examples / s (median)", 1))),
          "scaling.png", points=batch_epochs_points),
)}


def grid_study(axes: Sequence[Axis]) -> Study:
  """A plain --grid: lines against the first axis, one per value of the others."""
  return Study("grid", "grid", tuple(axes),
               functools.partial(report.plot_lines, x=axes[0].field,
                                 series=tuple(a.field for a in axes[1:])), "grid.png")


def study_points(study: Study, grid_axes: Sequence[Axis] = (),
                 ops: Sequence[str] = ()) -> tuple[list[Point], list[str]]:
  """The study's runs with `grid_axes` replacing its axes; and its axis fields."""
  fields = [a.field for a in study.axes]
  for axis in grid_axes:
    if axis.field not in fields:
      raise ValueError(f"--grid {axis.field}: not an axis of study {study.name!r} (its axes: "
                       f"{', '.join(fields) or 'none'})")
  if ops and study.name != "figure5":
    raise ValueError(f"--study_ops is for --study=figure5, not {study.name!r}")
  replaced = {a.field: a for a in grid_axes}
  axes = [replaced.get(a.field, a) for a in study.axes]
  if study.points is None:
    return grid_points(axes), fields
  return study.points(axes, ops or FIGURE5_OPS), fields
