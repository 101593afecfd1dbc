"""Linear probes (probe.py: logistic regression on frozen h) of the pretrained encoder
and, as a baseline, of a randomly initialised one: on all training labels and on
`entry.shots` labels per class (averaged over `entry.draws` seeded draws)."""

import jax
import optax

from simclr_jax import data
from simclr_jax import probe
from simclr_jax import train_step


class LinearProbes:
  """`linear_probe_top1`, `linear_probe_<shots>shot_top1` and their `random_init_`
  twins (the few-shot one only where every class has `shots` training images)."""

  def __init__(self, entry, ctx):
    self.entry, self.ctx = entry, ctx

  def run(self, state) -> dict[str, float]:
    entry, ctx = self.entry, self.ctx
    config = ctx.config
    if not ctx.plan.probes:
      return {}

    def batches(split):
      return lambda: data.create_eval_dataset(
          config, data_dir=ctx.data_dir, split=split).as_numpy_iterator()
    kwargs = dict(train_batches=batches(config.train_split),
                  test_batches=batches(config.eval_split),
                  shots=entry.shots if ctx.plan.few_shot else 0, draws=entry.draws)
    encoders = [("", {"params": state.params, "batch_stats": state.batch_stats})]
    if entry.random_init_baseline:
      random_init = train_step.create_train_state(
          jax.random.PRNGKey(config.seed + 1), ctx.model, optax.identity(),
          config.data.image_size)
      encoders.append(("random_init_", {"params": random_init.params,
                                        "batch_stats": random_init.batch_stats}))
    results = {}
    for prefix, variables in encoders:
      acc = probe.probe_encoder(ctx.model, variables, **kwargs)
      results[f"{prefix}linear_probe_top1"] = acc["top1"]
      if "few_shot_top1" in acc:
        results[f"{prefix}linear_probe_{entry.shots}shot_top1"] = acc["few_shot_top1"]
    return results
