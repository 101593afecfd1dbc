"""The `knn` mode: weighted kNN on L2-normalised h of the pretrained encoder (knn.py)."""

import ml_collections

from simclr_jax import eval_setup
from simclr_jax import knn as knn_lib
from simclr_jax import metric_log
from simclr_jax import models

ConfigDict = ml_collections.ConfigDict


def knn_eval(config: ConfigDict, workdir: str) -> dict[str, float]:
  """The `knn` mode: weighted kNN (config.knn) of the pretrained h on eval_split."""
  setup = eval_setup.make_setup(config, workdir)
  pre = setup.pretrained
  results = knn_lib.evaluate_knn(models.create_model(pre.model_config), pre.variables,
                                 config, data_dir=setup.data_dir, mesh=setup.mesh,
                                 num_classes=setup.info.num_classes)
  results.update(knn_k=config.knn.k, knn_temperature=config.knn.temperature,
                 pretrain_step=pre.step)
  log = metric_log.MetricLog(workdir)
  try:
    log.write(pre.step, results)
  finally:
    log.close()
  print(metric_log.format_table(results, title=f"Weighted kNN on h, {config.eval_split} "
                                               "split"))
  return results
