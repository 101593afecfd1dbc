"""The online probe's accuracy: the linear classifier trained with pretraining on
stop_gradient(h), evaluated on the eval split (top-1, and top-5 where the dataset has
more than 5 classes)."""

from simclr_jax import data
from simclr_jax import supervised


class OnlineProbe:
  """`eval_probe_top1` / `eval_probe_top5` (nothing without a probe or eval images)."""

  def __init__(self, entry, ctx):
    del entry  # no fields of its own
    self.ctx = ctx
    model = ctx.model
    self.eval_step = supervised.make_eval_step(
        lambda variables, images: model.apply(variables, images, train=False)["logits"],
        ctx.mesh)

  def run(self, state) -> dict[str, float]:
    ctx = self.ctx
    if not (ctx.config.model.online_probe and ctx.plan.eval_split):
      return {}
    batches = data.create_eval_dataset(ctx.config, data_dir=ctx.data_dir).as_numpy_iterator()
    acc = supervised.evaluate_classifier(
        self.eval_step, {"params": state.params, "batch_stats": state.batch_stats}, batches,
        ctx.mesh)
    results = {"eval_probe_top1": acc["top1"]}
    if ctx.plan.top5:
      results["eval_probe_top5"] = acc["top5"]
    return results
