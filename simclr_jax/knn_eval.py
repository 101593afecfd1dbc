"""The `knn` mode: weighted kNN on L2-normalised h of the pretrained encoder (knn.py)."""

import ml_collections

from simclr_jax import eval_setup
from simclr_jax import knn as knn_lib
from simclr_jax import metric_log
from simclr_jax import models

ConfigDict = ml_collections.ConfigDict


def validate_knn(config: ConfigDict) -> None:
  eval_setup.check_batch("eval_batch_size", config.eval_batch_size)
  if isinstance(config.knn.k, bool) or not isinstance(config.knn.k, int) or config.knn.k < 1:
    eval_setup.fail("knn.k", config.knn.k, "expected an integer >= 1")
  if not config.knn.temperature > 0:
    eval_setup.fail("knn.temperature", config.knn.temperature, "expected a number > 0")
  if not isinstance(config.knn.query_batch, int) or config.knn.query_batch < 1:
    eval_setup.fail("knn.query_batch", config.knn.query_batch, "expected an integer >= 1")


def knn_eval(config: ConfigDict, workdir: str) -> dict[str, float]:
  """The `knn` mode: weighted kNN (config.knn) of the pretrained h on eval_split."""
  validate_knn(config)
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
