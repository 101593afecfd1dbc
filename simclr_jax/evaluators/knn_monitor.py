"""The kNN monitor: weighted kNN accuracy of h (knn.py, protocol `config.knn`), the
bank from the train split, the queries from the eval split."""

from simclr_jax import knn


class KnnMonitor:
  """`knn_top1` / `knn_top5`, equal to the `knn` mode's on the same checkpoint."""

  def __init__(self, entry, ctx):
    del entry  # the protocol is config.knn, shared with the `knn` mode
    self.ctx = ctx

  def run(self, state) -> dict[str, float]:
    ctx = self.ctx
    if not ctx.plan.eval_split:
      return {}
    return knn.evaluate_knn(ctx.model, {"params": state.params,
                                        "batch_stats": state.batch_stats},
                            ctx.config, data_dir=ctx.data_dir, mesh=ctx.mesh,
                            num_classes=ctx.info.num_classes)
