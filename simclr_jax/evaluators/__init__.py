"""Evaluations during pretraining, one class per module (in the style of big_vision's
`evals`).

An evaluator is a class `Cls(entry, ctx)` with `run(state) -> {metric name: value}`:
`entry` is its config entry `config.evals.<name>` (`type`, `every_steps` and its own
fields), `ctx` the run it evaluates (attributes `config`, `model`, `mesh`, `data_dir`,
`info`, `plan`), `state` has `params`, `batch_stats` and `step`. It may raise: the loop
logs the failure and goes on. `REGISTRY` maps an entry's `type` to its class as
"module:Class", imported only when a run builds it (so that checking a config imports
no TensorFlow).
"""

import importlib

import ml_collections

REGISTRY = {
    "online_probe": "simclr_jax.evaluators.online_probe:OnlineProbe",
    "knn": "simclr_jax.evaluators.knn_monitor:KnnMonitor",
    "linear_probes": "simclr_jax.evaluators.linear_probes:LinearProbes",
    "transform_prediction": "simclr_jax.evaluators.transform_prediction:TransformPrediction",
}


def enabled(evals: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(name, entry) of every entry that runs (every_steps >= 0), in config order."""
  return [(name, entry) for name, entry in evals.items() if entry.every_steps >= 0]


def create(entry: ml_collections.ConfigDict, ctx):
  """The evaluator of `entry` (its class from REGISTRY[entry.type])."""
  module, name = REGISTRY[entry.type].split(":")
  return getattr(importlib.import_module(module), name)(entry, ctx)
