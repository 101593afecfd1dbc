"""Table 3's transformation-prediction evaluator against NumPy references."""

import types

import jax
import ml_collections
import numpy as np
import pytest

from simclr_jax import config_lib
from simclr_jax import models
from simclr_jax import parallel
from simclr_jax import small_data
from simclr_jax.evaluators import transform_prediction as tp
from tests import pretrained_fixture

GRAY = np.array([0.2989, 0.5870, 0.1140])


def numpy_sobel_magnitude(gray: np.ndarray) -> np.ndarray:
  """|(Gy, Gx)| of a 2-D image with the 3x3 Sobel kernels and reflect padding."""
  ky = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], float)
  p = np.pad(gray, 1, mode="reflect")
  h, w = gray.shape
  gy, gx = np.zeros((h, w)), np.zeros((h, w))
  for i in range(3):
    for j in range(3):
      gy += ky[i, j] * p[i:i + h, j:j + w]
      gx += ky.T[i, j] * p[i:i + h, j:j + w]
  return np.hypot(gy, gx)


def test_sobel_of_a_vertical_edge_and_of_random_images():
  step = np.zeros((1, 6, 6, 3), np.float32)
  step[:, :, 3:] = 1.0  # columns 0-2 black, 3-5 white
  got = tp.sobel(step)
  # Columns 2 and 3 straddle the edge: gx = (1 + 2 + 1) x white's luma there, 0 elsewhere.
  want = np.zeros((6, 6))
  want[:, 2:4] = 4.0 * GRAY.sum() / tp.SOBEL_MAX
  np.testing.assert_allclose(got[0, ..., 0], want, atol=1e-6)
  assert np.array_equal(got[..., 0], got[..., 2])
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 9, 9, 3)).astype(np.float32)
  got = tp.sobel(images)
  for image, out in zip(images, got):
    want = numpy_sobel_magnitude(image @ GRAY) / (4 * np.sqrt(2))
    np.testing.assert_allclose(out, np.repeat(want[..., None], 3, -1), atol=1e-5)
  assert got.min() >= 0 and got.max() <= 1


def test_grayscale_rotation_and_noise():
  rng = np.random.default_rng(1)
  images = rng.uniform(size=(8, 5, 5, 3)).astype(np.float32)
  gray = tp.grayscale(images)
  np.testing.assert_allclose(gray, np.repeat((images @ GRAY)[..., None], 3, -1), atol=1e-6)
  k = np.array([0, 1, 2, 3, 3, 2, 1, 0])
  rotated = tp.rotate(images, k)
  for image, kk, out in zip(images, k, rotated):
    want = image
    for _ in range(kk):  # k quarter turns counter-clockwise, one at a time
      want = np.stack([want[:, -1 - c] for c in range(want.shape[1])])
    assert np.array_equal(out, want)
  mid = np.full((200, 16, 16, 3), 0.5, np.float32)  # far from the clip at 0 and 1
  noisy = tp.add_noise(mid, 0.05, np.random.default_rng(2))
  assert abs((noisy - 0.5).mean()) < 0.002
  assert (noisy - 0.5).std() == pytest.approx(0.05, rel=0.02)
  assert tp.add_noise(mid, 2.0, np.random.default_rng(2)).min() == 0.0  # clipped


@pytest.mark.parametrize("task", list(tp.CLASSES))
def test_task_batches_are_balanced_deterministic_and_transform_by_label(task):
  rng = np.random.default_rng(3)
  images = rng.uniform(size=(10, 6, 6, 3)).astype(np.float32)
  mask = np.array([True] * 9 + [False])
  batches = [{"image": images, "label": np.zeros(10), "mask": mask}] * 2

  def run(seed):
    return list(tp.task_batches(task, batches, noise_sigma=0.1,
                                rng=np.random.default_rng(seed)))

  out = run(7)
  classes = tp.CLASSES[task]
  for batch in out:
    counts = np.bincount(batch["label"][mask], minlength=classes)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 9
    assert np.array_equal(batch["mask"], mask)
    for i, label in enumerate(batch["label"]):
      x, y = images[i], batch["image"][i]
      if label == 0:
        assert np.array_equal(x, y)
      elif task == "color":
        np.testing.assert_allclose(y, np.repeat([x @ GRAY], 3, 0).transpose(1, 2, 0),
                                   atol=1e-6)
      elif task == "rotation":
        assert np.array_equal(y, np.rot90(x, label))
      elif task == "noise":
        assert 0 < np.abs(y - x).mean() and y.min() >= 0 and y.max() <= 1
      else:
        np.testing.assert_allclose(
            y[..., 0], numpy_sobel_magnitude(x @ GRAY) / (4 * np.sqrt(2)), atol=1e-5)
  assert not np.array_equal(out[0]["label"], out[1]["label"])  # the stream moves on
  again = run(7)
  for a, b in zip(out, again):
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_task_metrics_separate_informative_from_uninformative_features():
  rng = np.random.default_rng(4)
  labels = rng.permutation(np.arange(400) % 4)
  centres = rng.normal(size=(4, 6)) * 3
  informative = centres[labels] + rng.normal(size=(400, 6))
  uninformative = rng.normal(size=(400, 6))
  train = {"h": informative[:300], "gh": uninformative[:300]}
  test = {"h": informative[300:], "gh": uninformative[300:]}
  out = tp.task_metrics("rotation", train, labels[:300], test, labels[300:])
  assert set(out) == {"transform_rotation_h_top1", "transform_rotation_gh_top1",
                      "transform_rotation_chance"}
  assert out["transform_rotation_h_top1"] > 0.95
  assert out["transform_rotation_gh_top1"] < 0.4
  assert out["transform_rotation_chance"] == np.bincount(labels[300:]).max() / 100


def tiny_context(tmp_path, **entry):
  config = pretrained_fixture.tiny_config()
  config.eval_batch_size = 64
  config.evals = ml_collections.ConfigDict({"t3": dict(type="transform_prediction",
                                                       every_steps=0, **entry)})
  model = models.create_model(config.model, num_classes=10)
  ctx = types.SimpleNamespace(config=config, model=model, mesh=parallel.make_mesh(),
                              data_dir=str(tmp_path / "tfds"), info=None,
                              plan=small_data.Plan())
  return ctx, config.evals.t3


def random_variables(model, image_size: int, seed: int = 0) -> dict:
  """He-normal kernels, unit BN scales and variances, zero biases and means: model.init's
  distribution in effect, without compiling it (minutes on a busy 2-core machine)."""
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), np.zeros((1, image_size, image_size, 3), np.float32),
      train=False))
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = jax.tree_util.keystr(path)
    if "'kernel'" in name:
      fan_in = np.prod(x.shape[:-1])
      return (rng.normal(size=x.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return np.full(x.shape, 1.0 if "'scale'" in name or "'var'" in name else 0.0,
                   np.float32)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def test_run_on_a_tiny_model_gives_every_metric(tmp_path):
  ctx, entry = tiny_context(tmp_path, max_images=128, seed=1)
  variables = random_variables(ctx.model, 16)
  state = types.SimpleNamespace(step=0, **parallel.replicate(variables, ctx.mesh))
  results = tp.TransformPrediction(entry, ctx).run(state)
  assert set(results) == {f"transform_{t}_{m}" for t in tp.CLASSES
                          for m in ("h_top1", "gh_top1", "chance")}
  assert all(0.0 <= v <= 1.0 for v in results.values()), results
  assert results["transform_rotation_chance"] == 0.25  # 128 eval images, balanced
  # Edge maps are far from digits even for random features: labels match their images.
  assert results["transform_sobel_h_top1"] > 0.8


@pytest.mark.parametrize("field,value,match", [
    ("tasks", "color,blur", "tasks = 'color,blur'"), ("max_images", 0, "max_images = 0"),
    ("noise_sigma", -1.0, "noise_sigma = -1.0"), ("seed", -3, "seed = -3")])
def test_bad_entry_fields_are_named(tmp_path, field, value, match):
  ctx, entry = tiny_context(tmp_path, **{field: value})
  with pytest.raises(config_lib.ConfigError, match=f"config.evals.t3.{match}"):
    tp.TransformPrediction(entry, ctx)
