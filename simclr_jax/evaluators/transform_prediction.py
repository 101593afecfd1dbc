"""Which transformation was applied, read linearly from frozen h and from frozen g(h).

The paper's Table 3 (Chen et al. 2020): g(h) discards what the contrastive loss makes
it invariant to, h keeps it. Each task turns eval-preprocessed images (centre views of
`config.train_split` and `config.eval_split`) into labelled transformed copies:

  color     0 = the image, 1 = its grayscale (tf.image's weights, 3 channels)
  rotation  k = rotated by k x 90 degrees counter-clockwise, k in {0, 1, 2, 3}
  noise     0 = the image, 1 = + N(0, noise_sigma^2) per pixel, clipped to [0, 1]
  sobel     0 = the image, 1 = Sobel gradient magnitude of its grayscale / (4 sqrt 2)
            (in [0, 1]), 3 channels

Labels are a seeded permutation of a balanced cycle over each batch's real images.
h and g(h) (the projection head's output z before normalisation; with head_mode "none",
g(h) = h) come from one inference-mode pass (BN running averages); a logistic regression
(probe.fit_and_score) fit on the train split's features is scored on the eval split's.
The chance level is the eval split's majority-class fraction.

Entry fields (all optional): max_images (per split, rounded up to whole global eval
batches; default 2048), noise_sigma (0.1, on [0, 1] pixel values), seed (0) and tasks
(comma-separated, default all four).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from absl import logging

from simclr_jax import config_lib
from simclr_jax import knn
from simclr_jax import parallel
from simclr_jax import probe
from simclr_jax.augment import color
from simclr_jax.augment import operators
from simclr_jax.parallel import REPLICATED, SPLIT

CLASSES = {"color": 2, "rotation": 4, "noise": 2, "sobel": 2}
DEFAULTS = dict(max_images=2048, noise_sigma=0.1, seed=0, tasks=",".join(CLASSES))
SOBEL_MAX = 1.0 / operators.SOBEL_SCALE  # the largest gradient magnitude of a [0, 1] image


# The training-time operators (augment/), on host arrays.
def grayscale(images: np.ndarray) -> np.ndarray:
  """[N, H, W, 3] -> luma (tf.image.rgb_to_grayscale's weights) kept as 3 channels."""
  return color.to_grayscale(tf.constant(images)).numpy()


def sobel(images: np.ndarray) -> np.ndarray:
  """[N, H, W, 3] -> |Sobel gradient| of the grayscale / SOBEL_MAX, 3 channels."""
  return operators.sobel(tf.constant(images)).numpy()


def rotate(images: np.ndarray, k: np.ndarray) -> np.ndarray:
  """Image i rotated by k[i] x 90 degrees counter-clockwise (square images)."""
  return operators.rotate90(tf.constant(images), tf.constant(k)).numpy()


def add_noise(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
  noise = rng.normal(0.0, sigma, size=images.shape).astype(np.float32)
  return np.clip(images + noise, 0.0, 1.0)


def balanced_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
  """A permutation of 0, 1, ..., classes - 1, 0, 1, ... of length n (counts differ by <= 1)."""
  return rng.permutation(np.arange(n) % classes).astype(np.int32)


def transform(task: str, images: np.ndarray, labels: np.ndarray, *, noise_sigma: float,
              rng: np.random.Generator) -> np.ndarray:
  """The `task`'s copy of images [N, H, W, 3] in [0, 1] for the given class labels."""
  if task == "rotation":
    return rotate(images, labels)
  changed = labels == 1
  out = images.copy()
  if task == "color":
    out[changed] = grayscale(images[changed])
  elif task == "noise":
    out[changed] = add_noise(images[changed], noise_sigma, rng)
  elif task == "sobel":
    out[changed] = sobel(images[changed])
  else:
    raise ValueError(f"unknown transformation task {task!r}: expected one of {list(CLASSES)}")
  return out


def task_batches(task: str, batches, *, noise_sigma: float, rng: np.random.Generator):
  """Eval batches {"image", "label", "mask"} -> the same with the task's images and labels,
  balanced over each batch's real rows (padding rows keep mask False and label 0)."""
  for batch in batches:
    images = np.asarray(batch["image"], np.float32)
    mask = np.asarray(batch["mask"], bool)
    labels = np.zeros(len(images), np.int32)
    labels[mask] = balanced_labels(int(mask.sum()), CLASSES[task], rng)
    yield {"image": transform(task, images, labels, noise_sigma=noise_sigma, rng=rng),
           "label": labels, "mask": mask}


def task_metrics(task: str, train: dict, train_labels: np.ndarray, test: dict,
                 test_labels: np.ndarray) -> dict[str, float]:
  """`transform_<task>_<name>_top1` of a logistic regression per feature set `name`
  (train[name]: [N, C], test[name]: [M, C]) and `transform_<task>_chance` (the test
  labels' majority-class fraction)."""
  out = {f"transform_{task}_{name}_top1": probe.fit_and_score(train[name], train_labels,
                                                               test[name], test_labels)
         for name in train}
  out[f"transform_{task}_chance"] = float(np.bincount(test_labels).max() / len(test_labels))
  return out


def make_feature_fn(model, mesh):
  """`(variables, images split along AXIS) -> [B, C_h + C_z]`: h and z side by side."""
  inference = model.clone(axis_name=None)

  def features(variables, images):
    out = inference.apply(variables, images, train=False)
    return jnp.concatenate([out["h"], out["z"]], axis=-1)

  return parallel.data_parallel(features, mesh, in_specs=(REPLICATED, SPLIT), out_specs=SPLIT)


class TransformPrediction:
  """Evaluator "transform_prediction": Table 3's accuracies on h and g(h) per task."""

  def __init__(self, entry, ctx):
    self.ctx = ctx
    fields = {k: entry.get(k, v) for k, v in DEFAULTS.items()}
    name = next((k for k, v in ctx.config.get("evals", {}).items() if v is entry), "<name>")

    def fail(field, allowed):
      raise config_lib.ConfigError(f"config.evals.{name}.{field} = {fields[field]!r} is not "
                                   f"allowed: {allowed}")

    self.tasks = [t.strip() for t in str(fields["tasks"]).split(",") if t.strip()]
    if not self.tasks or any(t not in CLASSES for t in self.tasks):
      fail("tasks", f"expected a comma-separated subset of {','.join(CLASSES)}")
    if isinstance(fields["max_images"], bool) or not isinstance(fields["max_images"], int) \
        or fields["max_images"] < 1:
      fail("max_images", "expected an integer >= 1")
    if not (isinstance(fields["noise_sigma"], (int, float)) and fields["noise_sigma"] > 0):
      fail("noise_sigma", "expected a number > 0")
    if isinstance(fields["seed"], bool) or not isinstance(fields["seed"], int) \
        or fields["seed"] < 0:
      fail("seed", "expected an integer >= 0")
    self.max_images, self.noise_sigma = fields["max_images"], float(fields["noise_sigma"])
    self.seed = fields["seed"]
    self.feature_fn = make_feature_fn(ctx.model, ctx.mesh)  # compiled once, at the first run

  def _features(self, variables, h_width: int, task: str, split: str,
                split_index: int):
    """({"h": [N, C_h], "gh": [N, C_z]}, [N] labels) of the task's copies of `split`."""
    config = self.ctx.config
    num_batches = -(-self.max_images // config.eval_batch_size)
    batches = itertools.islice(knn.split_batches(config, self.ctx.data_dir, split),
                               num_batches)
    rng = np.random.default_rng([self.seed, list(CLASSES).index(task), split_index,
                                 jax.process_index()])
    copies = task_batches(task, batches, noise_sigma=self.noise_sigma, rng=rng)
    both, labels = knn.extract_features(self.feature_fn, variables, copies, self.ctx.mesh)
    return {"h": both[:, :h_width], "gh": both[:, h_width:]}, labels

  def run(self, state) -> dict[str, float]:
    config, model = self.ctx.config, self.ctx.model
    if not self.ctx.plan.eval_split:
      raise ValueError(f"split {config.eval_split!r} has no images to score the "
                       "transformation classifiers on")
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    size = config.data.image_size
    h_width = jax.eval_shape(lambda v: model.clone(axis_name=None).apply(
        v, jnp.zeros((1, size, size, 3)), train=False, method="encode"),
                             variables).shape[-1]
    if model.head_mode == "none":
      logging.log_first_n(logging.INFO, "transform_prediction: head_mode 'none', g(h) = h", 1)
    results = {}
    for task in self.tasks:
      train, train_labels = self._features(variables, h_width, task,
                                           config.train_split, 0)
      test, test_labels = self._features(variables, h_width, task,
                                         config.eval_split, 1)
      results.update(task_metrics(task, train, train_labels, test, test_labels))
    return results
