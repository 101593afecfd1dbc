"""A sweep's results: results.csv, results.md and the study's figure (matplotlib).

Rows are dicts: the run's columns (varied fields, study labels), then metrics as
tools.runs.summarize writes them (fractions for accuracies).
"""

import csv
import statistics
from typing import Callable, Sequence

from tools.runs import FINAL_KEY

METRIC_COLUMNS = ("status", "steps", "peak_lr", FINAL_KEY, "eval_probe_top1", "final_loss",
                  "final_contrast_acc", "images_per_s", "wall_minutes",
                  "sweep_wall_minutes", "run")
# The Markdown table's metrics: (row key, header, scale).
MARKDOWN_METRICS = ((FINAL_KEY, "linear probe top-1 (%)", 100),
                    ("linear_probe_5shot_top1", "5-shot top-1 (%)", 100),
                    ("eval_probe_top1", "online probe top-1 (%)", 100),
                    ("final_contrast_acc", "contrastive acc. (%)", 100),
                    ("final_loss", "final loss", 1),
                    ("steps", "steps", 1),
                    ("sweep_wall_minutes", "run min", 1))
BASELINE_KEY = "random_init_linear_probe_top1"


def _cell(value) -> str:
  if value is None:
    return ""
  return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_csv(rows: Sequence[dict], columns: Sequence[str], path: str) -> None:
  """The runs' `columns` (varied fields, study labels), then the fixed metrics, then
  any other metric, sorted."""
  first = [*columns, *METRIC_COLUMNS]
  extra = sorted({k for row in rows for k in row} - set(first))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=[*first, *extra], restval="")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: _cell(v) for k, v in row.items()})


def read_csv(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _number(value, scale) -> str:
  if value is None or value == "":
    return ""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    if scale != 1:
      return f"{value * scale:.1f}"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
  return str(value)


def markdown_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
  rule = "|".join("---" if i == 0 else "---:" for i in range(len(header)))
  return "\n".join([f"| {' | '.join(header)} |", f"|{rule}|",
                    *(f"| {' | '.join(line)} |" for line in lines)]) + "\n"


def runs_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
  """One line per run: its `columns`, then the metrics any run has."""
  metrics = [m for m in MARKDOWN_METRICS if any(row.get(m[0]) is not None for row in rows)]
  header = ["run", *columns, "status", *(h for _, h, _ in metrics)]
  lines = [[row["run"], *(_cell(row.get(c)) for c in columns), row.get("status", ""),
            *(_number(row.get(k), s) for k, _, s in metrics)] for row in rows]
  return markdown_table(header, lines)


def write_markdown(rows: Sequence[dict], columns: Sequence[str], path: str, title: str,
                   sections: Sequence[str] = ()) -> None:
  """results.md: a title line, study sections (e.g. figure5's matrix), the runs."""
  baseline = [row[BASELINE_KEY] for row in rows if row.get(BASELINE_KEY) is not None]
  parts = [f"# {title}\n", *sections, runs_table(rows, columns)]
  if baseline:
    parts.append(f"Random-init encoder, same linear probe: "
                 f"{100 * statistics.mean(baseline):.1f}% top-1.\n")
  with open(path, "w") as f:
    f.write("\n".join(parts))


# --- figures ------------------------------------------------------------------------------

def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str, title: str) -> None:
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  fig.clf()
  _pyplot().close(fig)


def _baseline(ax, rows) -> None:
  baseline = [row[BASELINE_KEY] for row in rows if row.get(BASELINE_KEY) is not None]
  if baseline:
    ax.axhline(100 * statistics.mean(baseline), color="gray", ls="--",
               label="random-init encoder")


def _label(field: str) -> str:
  return field.rsplit(".", 1)[-1]


def plot_lines(rows: Sequence[dict], path: str, title: str = "", *, x: str,
               series: Sequence[str] = (), log_x: int = 0,
               panels: Sequence[tuple[str, str, float]] = (
                   (FINAL_KEY, "linear probe top-1 on the test split (%)", 100),)) -> None:
  """A panel per metric of `panels` against `x`, a line per value of the `series`
  fields; the online probe dotted next to the linear probe; numeric x or categories.
  Only finished runs are drawn (a failed run's last metrics compare with nothing)."""
  plt = _pyplot()
  rows = [row for row in rows if row.get("status") == "finished"]
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
  xs = list(dict.fromkeys(row.get(x) for row in rows))
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
  position = (lambda v: v) if numeric else {v: i for i, v in enumerate(xs)}.get
  groups = list(dict.fromkeys(tuple(row.get(s) for s in series) for row in rows))
  for ax, (key, ylabel, scale) in zip(axes[0], panels):
    for group in groups:
      runs = [row for row in rows if tuple(row.get(s) for s in series) == group]
      if numeric:
        runs.sort(key=lambda row: row.get(x))
      label = ", ".join(f"{_label(s)}={v}" for s, v in zip(series, group)) or None
      done = [row for row in runs if row.get(key) is not None]
      line, = ax.plot([position(row.get(x)) for row in done],
                      [scale * row[key] for row in done], "o-", label=label)
      if key == FINAL_KEY:
        online = [row for row in runs if row.get("eval_probe_top1") is not None]
        if online:
          ax.plot([position(row.get(x)) for row in online],
                  [100 * row["eval_probe_top1"] for row in online], "x:",
                  color=line.get_color(), label=f"{label or ''} (online probe)".strip())
    if key == FINAL_KEY:
      _baseline(ax, rows)
    if log_x:
      ax.set_xscale("log", base=log_x)
    if numeric:
      ax.set_xticks(xs, [f"{v:g}" for v in xs])
      ax.minorticks_off()
    else:
      ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  _save(fig, path, title)


def plot_bars(rows: Sequence[dict], path: str, title: str = "", *, x: str, series: str,
              key: str = FINAL_KEY) -> None:
  """Grouped bars of `key` (%): a group per value of `x`, a bar per value of `series`;
  runs without an `x` value (e.g. no head, whose output dim is h's) drawn as lines."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4))
  xs = sorted({row[x] for row in rows if row.get(x) is not None})
  kinds = list(dict.fromkeys(row.get(series) for row in rows if row.get(x) is not None))
  width = 0.8 / max(len(kinds), 1)
  for i, kind in enumerate(kinds):
    by_x = {row[x]: row.get(key) for row in rows
            if row.get(series) == kind and row.get(x) is not None}
    positions = [j + (i - (len(kinds) - 1) / 2) * width for j, v in enumerate(xs)
                 if by_x.get(v) is not None]
    ax.bar(positions, [100 * by_x[v] for v in xs if by_x.get(v) is not None], width,
           label=f"{_label(series)}={kind}")
  for row in rows:
    if row.get(x) is None and row.get(key) is not None:
      ax.axhline(100 * row[key], color="black", ls=":",
                 label=f"{_label(series)}={row.get(series)}")
  _baseline(ax, rows)
  ax.set_xticks(range(len(xs)), [str(v) for v in xs])
  ax.set_xlabel(x)
  ax.set_ylabel("linear probe top-1 on the test split (%)")
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=8)
  _save(fig, path, title)


def matrix(rows: Sequence[dict], ops: Sequence[str], key: str = FINAL_KEY) -> list[list]:
  """Figure 5's symmetric matrix of `key` over operator pairs (None where missing)."""
  cells = [[None] * len(ops) for _ in ops]
  for row in rows:
    if row.get(key) is None or row.get("op1") not in ops or row.get("op2") not in ops:
      continue
    i, j = ops.index(row["op1"]), ops.index(row["op2"])
    cells[i][j] = cells[j][i] = row[key]
  return cells


def _row_mean(values):
  values = [v for v in values if v is not None]
  return statistics.mean(values) if values else None


def matrix_table(rows: Sequence[dict], ops: Sequence[str]) -> str:
  """Markdown: linear-probe top-1 (%) for each pair, 1st operator x 2nd, row means."""
  cells = matrix(rows, ops)
  lines = [[op, *(_number(v, 100) for v in line), _number(_row_mean(line), 100)]
           for op, line in zip(ops, cells)]
  return markdown_table(["1st \\ 2nd", *ops, "row mean"], lines)


def plot_heatmap(rows: Sequence[dict], path: str, title: str = "", *,
                 ops: Callable[[Sequence[dict]], Sequence[str]]) -> None:
  """Figure 5: linear-probe top-1 (%) over operator pairs, with a row-mean column."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  plt = _pyplot()
  names = list(ops(rows))
  cells = matrix(rows, names)
  table = np.array([[np.nan if v is None else 100 * v for v in line]
                    + [np.nan if _row_mean(line) is None else 100 * _row_mean(line)]
                    for line in cells], dtype=float)
  fig, ax = plt.subplots(figsize=(1.1 * len(names) + 3, 0.9 * len(names) + 1.8))
  image = ax.imshow(np.ma.masked_invalid(table), cmap="Greens", aspect="auto")
  for (i, j), value in np.ndenumerate(table):
    if np.isfinite(value):
      ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=9)
  ax.axvline(len(names) - 0.5, color="white", lw=4)
  ax.set_xticks(range(len(names) + 1), [*names, "Average"], rotation=30)
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("2nd transformation")
  ax.set_ylabel("1st transformation")
  fig.colorbar(image, ax=ax, label="linear probe top-1 (%)")
  _save(fig, path, title)
