"""Linear probes on frozen representations h: quick readouts for small datasets.

Features are extracted once (encoder in inference mode, BN statistics recomputed on the
training images), then a multinomial logistic regression (scikit-learn, L-BFGS) is fit
on standardised features: on all training labels, and on k labels per class averaged
over seeded draws. The full linear-evaluation protocol lives in `linear_eval.py`.
"""

from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import linear_model
from sklearn import pipeline
from sklearn import preprocessing


def recompute_batch_stats(model, variables: dict, batches: Iterable[dict]) -> dict:
  """BN population statistics of `variables`' encoder over `batches` (masked images).

  Each batch's statistics are read exactly (a clone of the model with BN momentum 0)
  and averaged with weights = number of real examples, so the result does not depend
  on how long a running average had to warm up.
  """
  exact = model.clone(bn_momentum=0.0, axis_name=None)

  @jax.jit
  def batch_stats_of(images):
    _, mutated = exact.apply(variables, images, train=True, mutable=["batch_stats"])
    return mutated["batch_stats"]

  total, weight = None, 0.0
  for batch in batches:
    images = batch["image"][batch["mask"]]
    if len(images) < 2:
      continue
    stats = jax.device_get(batch_stats_of(jnp.asarray(images)))
    stats = jax.tree.map(lambda s: s * len(images), stats)
    total = stats if total is None else jax.tree.map(np.add, total, stats)
    weight += len(images)
  if total is None:
    raise ValueError("no images to recompute BatchNorm statistics from")
  return {**variables, "batch_stats": jax.tree.map(lambda s: s / weight, total)}


def extract_features(model, variables: dict,
                     batches: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
  """h for every real (mask True) example: ([N, C] float32, [N] int labels)."""
  inference = model.clone(axis_name=None)
  encode = jax.jit(lambda x: inference.apply(variables, x, train=False, method="encode"))
  feats, labels = [], []
  for batch in batches:
    mask = np.asarray(batch["mask"], bool)
    feats.append(np.asarray(encode(jnp.asarray(batch["image"])))[mask])
    labels.append(np.asarray(batch["label"])[mask])
  return np.concatenate(feats), np.concatenate(labels)


def fit_and_score(train_x, train_y, test_x, test_y, *, max_iter: int = 2000) -> float:
  """Top-1 accuracy of a logistic regression on standardised features."""
  clf = pipeline.make_pipeline(preprocessing.StandardScaler(),
                               linear_model.LogisticRegression(max_iter=max_iter))
  clf.fit(train_x, train_y)
  return float(clf.score(test_x, test_y))


def few_shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
  """`shots` example indices per class, drawn without replacement."""
  rng = np.random.default_rng(seed)
  picked = [rng.choice(np.flatnonzero(labels == c), size=shots, replace=False)
            for c in np.unique(labels)]
  return np.concatenate(picked)


def probe_accuracies(train: tuple, test: tuple, *, shots: int, draws: int) -> dict[str, float]:
  """{"top1": all-label accuracy, "few_shot_top1": mean over `draws` seeded k-shot
  draws (absent when shots == 0)}."""
  (train_x, train_y), (test_x, test_y) = train, test
  results = {"top1": fit_and_score(train_x, train_y, test_x, test_y)}
  if shots > 0:
    results["few_shot_top1"] = float(np.mean([
        fit_and_score(train_x[i], train_y[i], test_x, test_y)
        for i in (few_shot_indices(train_y, shots, seed) for seed in range(draws))]))
  return results


def probe_encoder(model, variables: dict, train_batches: Any, test_batches: Any, *,
                  shots: int, draws: int) -> dict[str, float]:
  """Recomputes BN statistics on the train images, then runs both probes (the few-shot
  one unless shots == 0).

  `train_batches` / `test_batches` are callables returning fresh iterables of
  {"image", "label", "mask"} batches (no augmentation).
  """
  variables = recompute_batch_stats(model, variables, train_batches())
  train = extract_features(model, variables, train_batches())
  test = extract_features(model, variables, test_batches())
  return probe_accuracies(train, test, shots=shots, draws=draws)
