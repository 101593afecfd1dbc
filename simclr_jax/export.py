"""The `export` mode: writes a pretraining checkpoint as an export directory
(export_format.py describes the format) and checks each reloaded artifact.

The loaders are re-exported here, the names users call: `export.load_encoder(dir)`.
"""

import os
from typing import Any

import ml_collections

from simclr_jax.export_format import (  # noqa: F401  (the public loaders)
    ExportError, ExportTargetError, JAX_EXPORT_FILE, MODEL_JSON, SAVED_MODEL_DIR,
    build_model, check_target, load_encoder, load_jax_export, load_saved_model,
    load_variables, read_spec, verify_export, write_export)

EXPORT_METRICS = "export_metrics.jsonl"  # in the workdir of mode=export


def target_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The export mode's directory, checked before anything is written (`check_target`);
  the workdir itself is refused: it holds the run's config and metrics."""
  export_dir = os.path.abspath(config.export.dir or os.path.join(workdir, "export"))
  if os.path.abspath(workdir) == export_dir:
    raise ExportTargetError(f"config.export.dir = {config.export.dir!r} is not allowed: it "
                            "is the workdir; expected a directory of its own")
  check_target(export_dir)
  return export_dir


def export(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The `export` mode: writes <workdir>/export (or config.export.dir) and checks it."""
  # Imported here: loading an export must need neither the input pipeline nor the
  # metric writers.
  from simclr_jax import metric_log  # pylint: disable=g-import-not-at-top
  from simclr_jax import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top
  export_dir = target_dir(config, workdir)
  pretrained = pretrained_lib.load_pretrained(pretrained_lib.init_from(config, workdir))
  image_size = (config.export.image_size if config.export.image_size > 0
                else pretrained.config.data.image_size)
  spec = write_export(pretrained, export_dir, image_size=image_size,
                      platforms=tuple(config.export.platforms))
  model = build_model(spec["model"])
  results = verify_export(export_dir, model, pretrained.variables, image_size)
  results.update(export_image_size=image_size, pretrain_step=pretrained.step)
  log = metric_log.MetricLog(workdir, EXPORT_METRICS)  # not the pretraining's metrics.jsonl
  try:
    log.write(pretrained.step, {**results, "export_dir": export_dir})
  finally:
    log.close()
  print(metric_log.format_table(results, title=f"Exported to {export_dir}: relative error "
                                               "of each reloaded artifact"))
  return results
