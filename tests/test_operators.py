"""Tests of Figure 4's other operators (rotation, cutout, Sobel, noise) and of the
per-view policies (augment.view2), against NumPy references and distributions.

Statistical checks state their alpha: binomial rates within 4 standard deviations
(alpha ~ 6e-5 each), KS and chi-square tests at alpha = 1e-3.
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from configs import base
from simclr_jax import augment as A
from simclr_jax import config_lib
from simclr_jax import data as ip
from tests.fixtures import make_default_views as fixture

_ALPHA = 1e-3


def _images(n, size, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, [n, size, size, 3]).astype(np.float32)


def _seeds(n, key=12345):
  return tf.constant(np.stack([np.full(n, key), np.arange(n)], 1), tf.int64)


# ------------------------------------------------------------------------------------
# Operator values against NumPy


def test_rotate90_is_np_rot90():
  x = _images(4, 8)
  out = A.rotate90(tf.constant(x), tf.constant([0, 1, 2, 3])).numpy()
  for k in range(4):
    np.testing.assert_array_equal(out[k], np.rot90(x[k], k, axes=(0, 1)))


def test_cutout_zeroes_the_clipped_square_and_nothing_else():
  x = _images(5, 10)
  side = np.array([3, 4, 10, 1, 5])
  cy, cx = np.array([0, 9, 5, 4, 2]), np.array([9, 0, 5, 6, 7])
  apply = np.array([True, True, True, True, False])
  out = A.cutout(tf.constant(x), tf.constant(apply), tf.constant(side, tf.int32),
                 tf.constant(cy, tf.int32), tf.constant(cx, tf.int32)).numpy()
  for b in range(5):
    ref = x[b].copy()
    if apply[b]:
      y0, x0 = cy[b] - side[b] // 2, cx[b] - side[b] // 2
      ref[max(y0, 0):max(y0 + side[b], 0), max(x0, 0):max(x0 + side[b], 0)] = 0.0
    np.testing.assert_array_equal(out[b], ref)
  assert (out[2] == 0).all() and (out[0, :2, 8:] == 0).all() and (out[0, 2:] != 0).all()


def _numpy_sobel(x):
  """Sobel magnitude of the grayscale image, reflected borders, / 4 sqrt(2)."""
  gray = x @ np.array(A.GRAY_WEIGHTS, np.float64)
  p = np.pad(gray, 1, mode="reflect")
  h, w = gray.shape
  win = lambda dy, dx: p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]  # noqa: E731
  gx = (win(-1, 1) + 2 * win(0, 1) + win(1, 1)) - (win(-1, -1) + 2 * win(0, -1) + win(1, -1))
  gy = (win(1, -1) + 2 * win(1, 0) + win(1, 1)) - (win(-1, -1) + 2 * win(-1, 0) + win(-1, 1))
  return np.sqrt(gx ** 2 + gy ** 2) / (4 * np.sqrt(2))


def test_sobel_against_numpy_and_a_known_edge():
  x = _images(3, 12, seed=1)
  out = A.sobel(tf.constant(x)).numpy()
  for b in range(3):
    ref = _numpy_sobel(x[b].astype(np.float64))
    for c in range(3):
      np.testing.assert_allclose(out[b, ..., c], ref, atol=1e-6)
  # A vertical step 0 -> 1 between columns 3 and 4: |gx| = 4 on both sides, 0 elsewhere.
  step = np.zeros([1, 8, 8, 3], np.float32)
  step[..., 4:, :] = 1.0
  edge = A.sobel(tf.constant(step)).numpy()[0, ..., 0]
  expected = np.zeros([8, 8])
  expected[:, 3:5] = 4 * sum(A.GRAY_WEIGHTS) * A.SOBEL_SCALE
  np.testing.assert_allclose(edge, expected, atol=1e-6)
  assert out.min() >= 0.0 and out.max() <= 1.0


def test_noise_adds_sigma_times_normals_and_clips():
  spec = A.ViewSpec(image_size=16, noise_prob=1.0, noise_sigma_range=(0.01, 0.08))
  n = 64
  u, z = A.operator_uniforms(_seeds(n), 1, 16 * 16 * 3)
  x = tf.fill([n, 16, 16, 3], 0.5)
  out = A.apply_operators(x, u[:, 0], z[:, 0], spec).numpy()
  sigma = A.operator_params(u[:, 0], spec)["sigma"].numpy()
  np.testing.assert_allclose(out, np.clip(0.5 + sigma[:, None, None, None]
                                          * z.numpy().reshape(out.shape), 0, 1), atol=1e-6)
  standardised = ((out - 0.5) / sigma[:, None, None, None]).ravel()
  assert stats.kstest(standardised, "norm").pvalue > _ALPHA
  # Each view has its own sigma: the per-view spread follows it.
  np.testing.assert_allclose((out - 0.5).std(axis=(1, 2, 3)), sigma, rtol=0.15)
  clipped = A.apply_operators(tf.fill([n, 16, 16, 3], 0.98), u[:, 0], z[:, 0], spec).numpy()
  assert clipped.max() == 1.0 and clipped.min() >= 0.0


# ------------------------------------------------------------------------------------
# The draws


def test_operator_draw_distributions():
  size = 40
  spec = A.ViewSpec(image_size=size, rotate_prob=0.3, cutout_prob=0.6, sobel_prob=0.5,
                    noise_prob=0.25, cutout_size_range=(0.1, 0.6),
                    noise_sigma_range=(0.02, 0.3))
  n = 4000
  u, _ = A.operator_uniforms(_seeds(n), 2, 0)
  params = [{k: v.numpy() for k, v in A.operator_params(u[:, v], spec).items()}
            for v in range(2)]
  p = params[0]
  for name, rate in [("rotate", 0.3), ("cutout", 0.6), ("sobel", 0.5), ("noise", 0.25)]:
    assert abs(p[name].mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n), name
  # The two views' draws are independent.
  assert abs(stats.spearmanr(p["sigma"], params[1]["sigma"])[0]) < 0.06
  assert stats.chisquare(np.bincount(p["k"], minlength=4)[1:]).pvalue > _ALPHA
  for key in ("center_y", "center_x"):
    assert stats.chisquare(np.bincount(p[key], minlength=size)).pvalue > _ALPHA
  # side = rint(f size), f ~ U(0.1, 0.6): P(side = m) is the length of f's cell.
  lo, hi = spec.cutout_size_range
  sides = np.arange(round(lo * size), round(hi * size) + 1)
  cells = (np.minimum((sides + 0.5) / size, hi) - np.maximum((sides - 0.5) / size, lo))
  observed = np.array([(p["side"] == m).sum() for m in sides])
  assert observed.sum() == n
  assert stats.chisquare(observed, cells / cells.sum() * n).pvalue > _ALPHA
  assert stats.kstest((p["sigma"] - 0.02) / 0.28, "uniform").pvalue > _ALPHA


def test_operators_are_deterministic_per_example_and_off_costs_nothing():
  spec = A.ViewSpec(image_size=12, rotate_prob=0.5, cutout_prob=0.5, sobel_prob=0.3,
                    noise_prob=0.5)
  views = [tf.constant(_images(8, 12, seed=v)) for v in range(2)]
  seeds = _seeds(8)
  out = [v.numpy() for v in A.apply_view_operators(views, seeds, (spec, spec))]
  again = A.apply_view_operators(views, seeds, (spec, spec))
  for a, b in zip(out, again):
    np.testing.assert_array_equal(a, b.numpy())
  order = [5, 2, 7, 0, 1, 6, 3, 4]  # another batch composition: the same views
  shuffled = A.apply_view_operators([tf.gather(v, order) for v in views],
                                    tf.gather(seeds, order), (spec, spec))
  for a, b in zip(out, shuffled):
    np.testing.assert_array_equal(a[order], b.numpy())
  other = A.apply_view_operators(views, _seeds(8, key=7), (spec, spec))
  assert np.abs(other[0].numpy() - out[0]).max() > 0.1
  plain = A.ViewSpec(image_size=12)
  assert A.apply_view_operators(views, seeds, (plain, plain)) is views


# ------------------------------------------------------------------------------------
# The pipeline: default policies unchanged, per-view policies


@pytest.mark.parametrize("case", sorted(fixture.CASES))
def test_default_policies_make_the_views_they_made_before(case):
  """Views of the pipeline before these operators existed (e37d07f; equal bit for bit
  on the machine that made the fixture; the tolerance allows other CPUs' rounding)."""
  ref = np.load(fixture.PATH)[case]
  np.testing.assert_allclose(fixture.case_views(case), ref, rtol=0, atol=1e-5)


def _batches(case, config, n=1, start_step=0):
  it = ip.pretrain_batches(fixture.CASES[case](), config, start_step=start_step,
                           process_index=0, process_count=1).as_numpy_iterator()
  return [next(it) for _ in range(n)]


def _figure5(config, **view1):
  """Figure 5's protocol: the studied operators on view 1, view 2 the identity."""
  for field, value in view1.items():
    config.augment[field] = value
  v2 = config.augment.view2
  v2.crop, v2.flip, v2.color_jitter_prob, v2.grayscale_prob = False, False, 0.0, 0.0
  v2.blur = False
  v2.rotate_prob = v2.cutout_prob = v2.sobel_prob = v2.noise_prob = 0.0
  return config


def test_view2_overrides_apply_to_the_second_view_only():
  c = _figure5(fixture.case_config("fixed"), rotate_prob=1.0)
  config_lib.validate(c)
  first, second = _batches("fixed", c, n=2)
  # View 2 is the image itself (16 px sources resized to 16 px).
  images = fixture.CASES["fixed"]().images / np.float32(255.0)
  for b in (first, second):
    for image2 in b["image2"]:
      assert np.abs(images - image2).max(axis=(1, 2, 3)).min() < 1e-6
  # View 1 is the default policy's view (the fixture), rotated by 90, 180 or 270 degrees.
  default = np.load(fixture.PATH)["fixed"][0, 0]
  for image1, ref in zip(first["image1"], default):
    errors = [np.abs(np.rot90(ref, k) - image1).max() for k in range(4)]
    assert np.argmin(errors) > 0 and min(errors) < 1e-5, errors
  # A resumed stream continues with the same views.
  resumed = _batches("fixed", c, start_step=1)[0]
  for key in ("image1", "image2"):
    np.testing.assert_array_equal(resumed[key], second[key])


def test_view2_identity_of_encoded_images_is_the_whole_image_resized():
  c = _figure5(fixture.case_config("jpeg_blur"), sobel_prob=1.0, cutout_prob=1.0)
  config_lib.validate(c)
  batch = _batches("jpeg_blur", c)[0]
  decoded = [tf.io.decode_jpeg(e, channels=3) for e in fixture.CASES["jpeg_blur"]().images]
  refs = np.stack([np.clip(tf.image.resize(tf.cast(d, tf.float32), [16, 16], method="bicubic",
                                           antialias=False).numpy() / 255.0, 0, 1)
                   for d in decoded])
  for image1, image2 in zip(batch["image1"], batch["image2"]):
    assert np.abs(refs - image2).max(axis=(1, 2, 3)).min() < 1e-5
    assert np.ptp(image1, axis=-1).max() == 0.0  # Sobel: 3 equal channels
    assert (image1 == 0).all(axis=-1).any()  # inside the cutout square (side >= 3 px)


def test_view_specs_from_config():
  c = base.get_config()
  c.augment.cutout_prob, c.augment.view2.cutout_prob = 0.5, 0.0
  c.augment.view2.crop, c.augment.view2.area_range = False, (0.5, 1.0)
  first, second = A.ViewSpec.pretrain_views(c)
  assert first == A.ViewSpec.pretrain(c) and first.crop and first.cutout_prob == 0.5
  assert not second.crop and second.area_range == (0.5, 1.0) and second.cutout_prob == 0
  assert second.color_jitter_prob == first.color_jitter_prob
  c.augment.rotate_prob = c.augment.sobel_prob = c.augment.noise_prob = 0.5
  assert not A.ViewSpec.crop_flip(c).operators
  assert A.ViewSpec.pretrain_views(base.get_config())[1] == A.ViewSpec.pretrain(base.get_config())


@pytest.mark.parametrize("field,value,message", [
    ("augment.cutout_prob", 1.5, "config.augment.cutout_prob = 1.5 .* probability"),
    ("augment.cutout_size_range", (0.0, 0.5), "cutout_size_range = \\(0.0, 0.5\\)"),
    ("augment.noise_sigma_range", (0.3, 0.1), "noise_sigma_range = \\(0.3, 0.1\\)"),
    ("augment.view2.rotate_prob", -0.1, "config.augment.view2.rotate_prob = -0.1"),
    ("augment.view2.area_range", (0.5, 2.0), "config.augment.view2.area_range"),
    ("augment.view2.jitter_impl", "v3", "config.augment.view2.jitter_impl = 'v3'"),
    ("augment.view2.blur", False, "view2.blur = False .*blur_on = 'data'"),
    ("augment.sobel_prob", 0.5, "augment.sobel_prob = 0.5 .*blur_on = 'data'"),
])
def test_bad_augment_fields_are_named(field, value, message):
  c = base.get_config()
  c.augment.blur = True  # on the device (the default blur_on)
  config_lib.validate(c)
  c.update_from_flattened_dict({field: value})
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(c)
