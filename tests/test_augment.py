"""Tests of simclr_jax.augment against tf.image's own ops and NumPy references.

The fast batched augmentations must give the same views as the per-image tf.image
pipeline of the official code (given the same random draws) and the same
distribution of views (checked on samples with KS and binomial tolerances).
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from configs import base
from simclr_jax import augment as A

_SPEC32 = A.ViewSpec(image_size=32, color_strength=0.5)


def _uniforms(n, spec, seed=0, views=None):
  shape = [n, spec.num_uniforms] if views is None else [n, views, spec.num_uniforms]
  return tf.random.stateless_uniform(shape, seed=[seed, 17])


def _tf_op_windows(height, width, n, seed=0):
  """Windows drawn by tf.image.stateless_sample_distorted_bounding_box itself."""
  def draw(i):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        [height, width, 3], tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=[seed, i],
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=100, use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])
  ds = tf.data.Dataset.range(n).map(lambda i: draw(tf.cast(i, tf.int32))).batch(n)
  return next(iter(ds)).numpy()


# ------------------------------------------------------------------------------------
# Crop windows


@pytest.mark.parametrize("height,width", [(32, 32), (350, 400), (200, 400)])
def test_crop_sampler_matches_tf_op_distribution(height, width):
  spec = A.ViewSpec(image_size=32)
  mine = A.sample_crop_window(_uniforms(3000, spec), height, width, spec).numpy()
  ref = _tf_op_windows(height, width, 3000)
  for name, a, b in [("area", mine[:, 2] * mine[:, 3], ref[:, 2] * ref[:, 3]),
                     ("aspect", mine[:, 3] / mine[:, 2], ref[:, 3] / ref[:, 2]),
                     ("offset_y", mine[:, 0], ref[:, 0]),
                     ("offset_x", mine[:, 1], ref[:, 1])]:
    p = stats.ks_2samp(a, b).pvalue
    assert p > 1e-3, (name, p)


def test_crop_windows_inside_configured_ranges():
  spec = A.ViewSpec(image_size=32)
  h, w = 300, 400
  win = A.sample_crop_window(_uniforms(5000, spec, seed=1), h, w, spec).numpy()
  assert (win[:, :2] >= 0).all()
  assert (win[:, 0] + win[:, 2] <= h).all() and (win[:, 1] + win[:, 3] <= w).all()
  area = win[:, 2] * win[:, 3] / (h * w)
  # min_object_covered = 0.1 makes the effective minimum 0.10 (the spec's measurement).
  assert area.min() >= 0.1 and area.max() <= 1.0
  ratio = win[:, 3] / win[:, 2]
  slack = 0.5 / win[:, 2]  # the width is rounded to an integer
  assert (ratio >= 3 / 4 - slack).all() and (ratio <= 4 / 3 + slack).all()
  # The height is drawn uniformly, not the area: the median area is about 0.38.
  assert 0.33 < np.median(area) < 0.43
  hist, _ = np.histogram(area, bins=9, range=(0.1, 1.0))
  assert (hist > 0).all()


def test_crop_area_range_is_a_config_field():
  config = base.get_config()
  config.augment.area_range = (0.5, 0.6)
  config.augment.aspect_ratio_range = (1.0, 1.0)
  spec = A.ViewSpec.pretrain(config)
  win = A.sample_crop_window(_uniforms(2000, spec), 100, 100, spec).numpy()
  area = win[:, 2] * win[:, 3] / 1e4
  assert (area >= 0.5).all() and (area <= 0.6).all()
  assert (win[:, 2] == win[:, 3]).all()


def test_eval_window():
  # Official centre crop: rint(0.875 x shorter side), centred with the +1 // 2 rule.
  np.testing.assert_array_equal(A.eval_window(350, 400).numpy(), [22, 47, 306, 306])


# ------------------------------------------------------------------------------------
# Resize, colour, grayscale, blur against tf.image


def test_crop_resize_batch_matches_tf_image_resize():
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(0, 255, [3, 40, 50, 3]).astype(np.float32))
  windows = tf.constant([[[3, 5, 20, 30], [0, 0, 40, 50]], [[10, 7, 9, 11], [1, 2, 38, 7]],
                         [[0, 0, 32, 32], [20, 30, 20, 20]]])
  flips = tf.constant([[False, True], [True, False], [False, False]])
  out = A.crop_resize_batch(images, tf.transpose(windows, [1, 0, 2]), tf.transpose(flips),
                            32).numpy()
  assert out.shape == (2, 3, 32, 32, 3)  # view-major
  for n in range(3):
    for v in range(2):
      y, x, h, w = windows[n, v].numpy()
      ref = tf.image.resize(images[n, y:y + h, x:x + w], [32, 32], method="bicubic",
                            antialias=False).numpy()
      if flips[n, v]:
        ref = ref[:, ::-1]
      np.testing.assert_allclose(out[v, n], ref, atol=0.02)  # 0-255 scale


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (-0.3, 1.3)])
def test_colour_ops_match_tf_image(low, high):
  # Out-of-range inputs too: the first jitter op sees the bicubic overshoot.
  rng = np.random.default_rng(1)
  x = tf.constant(rng.uniform(low, high, [6, 9, 11, 3]).astype(np.float32))
  for i, f in enumerate([0.2, 0.7, 1.0, 1.4, 1.8, 0.0]):
    np.testing.assert_allclose(A.adjust_saturation(x[i], f).numpy(),
                               tf.image.adjust_saturation(x[i], f).numpy(), atol=2e-6)
    np.testing.assert_allclose(A.adjust_contrast(x[i], f).numpy(),
                               tf.image.adjust_contrast(x[i], f).numpy(), atol=2e-6)
  for i, d in enumerate([-0.2, -0.07, 0.0, 0.05, 0.2, 0.5]):
    np.testing.assert_allclose(A.adjust_hue(x[i], d).numpy(),
                               tf.image.adjust_hue(x[i], d).numpy(), atol=3e-6)
  np.testing.assert_allclose(A.to_grayscale(x).numpy(),
                             tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x)).numpy(),
                             atol=1e-6)


def _numpy_blur(x, sigma, radius):
  t = np.arange(-radius, radius + 1)
  k = np.exp(-t ** 2 / (2 * sigma ** 2))
  k /= k.sum()
  h, w = x.shape[:2]
  out = np.zeros_like(x, dtype=np.float64)
  for i in range(h):
    for j in range(w):
      for a in range(-radius, radius + 1):
        for b in range(-radius, radius + 1):
          if 0 <= i + a < h and 0 <= j + b < w:
            out[i, j] += k[a + radius] * k[b + radius] * x[i + a, j + b]
  return out


def _reference_view(x, p, i, spec):
  """The official per-image order with tf.image ops, given view i's draws p."""
  if p["color"][i]:
    brightness = (
        (lambda v: tf.image.adjust_brightness(v, p["brightness"][i]))
        if spec.jitter_impl == "simclrv1" else (lambda v: v * p["brightness"][i]))
    ops = [brightness,
           lambda v: tf.image.adjust_contrast(v, p["contrast"][i]),
           lambda v: tf.image.adjust_saturation(v, p["saturation"][i]),
           lambda v: tf.image.adjust_hue(v, p["hue"][i])]
    for k in p["order"][i]:
      x = tf.clip_by_value(ops[k](x), 0.0, 1.0)
  if p["gray"][i]:
    x = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x))
  x = np.clip(x.numpy(), 0.0, 1.0)
  if spec.blur and p["blur"][i]:
    radius = A.blur_radius(spec.image_size, spec.blur_kernel_fraction)
    x = np.clip(_numpy_blur(x, p["sigma"][i], radius), 0.0, 1.0)
  return x


@pytest.mark.parametrize("impl,random_order", [("simclrv2", True), ("simclrv1", True),
                                               ("simclrv2", False)])
def test_finish_views_equals_official_per_image_pipeline(impl, random_order):
  spec = A.ViewSpec(image_size=12, color_strength=1.0, blur=True, blur_kernel_fraction=0.5,
                    jitter_impl=impl, color_random_order=random_order)
  rng = np.random.default_rng(2)
  views = tf.constant(rng.uniform(-0.2, 1.2, [24, 12, 12, 3]).astype(np.float32))
  u = _uniforms(24, spec, seed=3)
  out = A.finish_views(views, u, spec).numpy()
  p = {k: v.numpy() for k, v in A.color_params(u, spec).items()}
  assert 0 < p["color"].sum() < 24 and p["gray"].any() and p["blur"].any()
  if not random_order:  # the official color_jitter_nonrand order
    assert np.all(p["order"] == np.arange(4))
  for i in range(24):
    np.testing.assert_allclose(out[i], _reference_view(views[i], p, i, spec), atol=1e-5)
  assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0


def test_blur_kernel_has_23_taps_at_224px():
  assert 2 * A.blur_radius(224, 0.1) + 1 == 23


def test_blur_of_a_batch_with_no_view_drawn_for_it_is_the_identity():
  spec = A.ViewSpec(image_size=12, blur=True, blur_kernel_fraction=0.5)
  views = tf.random.uniform([3, 12, 12, 3], seed=1)
  params = {"blur": tf.constant([False, False, False]), "sigma": tf.constant([1.0] * 3)}
  np.testing.assert_array_equal(A.blur_views(views, params, spec).numpy(), views.numpy())
  one = {"blur": tf.constant([False, True, False]), "sigma": tf.constant([1.0] * 3)}
  out = A.blur_views(views, one, spec).numpy()
  np.testing.assert_array_equal(out[[0, 2]], views.numpy()[[0, 2]])
  np.testing.assert_allclose(out[1], np.clip(_numpy_blur(views.numpy()[1], 1.0, 3), 0, 1),
                             atol=1e-5)
  k = A.gaussian_kernel(tf.constant([0.5, 2.0]), 11).numpy()
  assert k.shape == (2, 23)
  np.testing.assert_allclose(k.sum(axis=1), 1.0, rtol=1e-6)


# ------------------------------------------------------------------------------------
# Whole views: shapes, determinism, distribution


def _digits_like(n, seed=0):
  """Colourful 32x32 uint8 images."""
  rng = np.random.default_rng(seed)
  base_img = rng.integers(0, 256, [n, 8, 8, 3]).astype(np.uint8)
  return tf.constant(np.repeat(np.repeat(base_img, 4, axis=1), 4, axis=2))


def _fixed_batch(images, u, spec):
  """augment_fixed_batch as one array [N, V, S, S, 3]."""
  return tf.stack(A.augment_fixed_batch(images, u, spec), axis=1)


def test_fixed_batch_shapes_ranges_and_determinism():
  images = _digits_like(8)
  seeds = tf.constant([[i, 5] for i in range(8)], tf.int64)
  u = tf.stack([A.view_uniforms(s, 2, _SPEC32) for s in seeds])
  out = _fixed_batch(images, u, _SPEC32).numpy()
  assert out.shape == (8, 2, 32, 32, 3) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_array_equal(out, _fixed_batch(images, u, _SPEC32).numpy())
  # The two views of an image differ; a view depends on its own seed only.
  assert all(np.abs(out[n, 0] - out[n, 1]).max() > 0.05 for n in range(8))
  order = [3, 1, 0, 7, 2, 6, 4, 5]  # another batch composition: the same views
  shuffled = _fixed_batch(tf.gather(images, order), tf.gather(u, order), _SPEC32)
  np.testing.assert_allclose(shuffled.numpy(), out[order], atol=1e-6)
  other = tf.stack([A.view_uniforms(s + 100, 2, _SPEC32) for s in seeds])
  assert np.abs(_fixed_batch(images, other, _SPEC32).numpy() - out).max() > 0.1


def test_fixed_batch_equals_per_image_crop_resize_and_jitter():
  images = _digits_like(4, seed=3)
  u = _uniforms(4, _SPEC32, seed=4, views=2)
  out = _fixed_batch(images, u, _SPEC32).numpy()
  windows = A.sample_crop_window(u, 32, 32, _SPEC32).numpy()
  flips = A.flip_draw(u, _SPEC32).numpy()
  p = {k: v.numpy() for k, v in A.color_params(tf.reshape(u, [8, -1]), _SPEC32).items()}
  for n in range(4):
    for v in range(2):
      y, x, h, w = windows[n, v]
      crop = tf.cast(images[n, y:y + h, x:x + w], tf.float32) / 255.0
      crop = tf.image.flip_left_right(crop) if flips[n, v] else crop
      view = tf.image.resize(crop, [32, 32], method="bicubic", antialias=False)
      ref = _reference_view(view, p, 2 * n + v, _SPEC32)
      np.testing.assert_allclose(out[n, v], ref, atol=2e-3)


def _decode_views(encoded, seed, spec, num_views=2):
  """decode_views on seed: the views and their flips."""
  seed = tf.constant(seed, tf.int64)
  u = A.view_uniforms(seed, num_views, spec)
  views = np.stack([v.numpy() for v in A.decode_views(encoded, seed, u, spec)])
  return views, A.flip_draw(u, spec).numpy()


def _reference_views(image, seed, flips, spec):
  """Crop box v of the image (from the example's seed), mirrored if flips[v], resized."""
  out = []
  for v, flip in enumerate(flips):
    begin, size = (t.numpy() for t in A.crop_box(
        tf.constant(image.shape), tf.constant(seed, tf.int64), v, spec))
    crop = image[begin[0]:begin[0] + size[0], begin[1]:begin[1] + size[1]]
    crop = crop[:, ::-1] if flip else crop
    out.append(tf.image.resize(crop.astype(np.float32), [spec.image_size] * 2,
                               method="bicubic", antialias=False).numpy())
  return np.stack(out)


def test_jpeg_views_decode_only_the_union_of_the_crop_boxes():
  rng = np.random.default_rng(5)
  image = np.clip(rng.normal(128, 60, [70, 90, 3]), 0, 255).astype(np.uint8)
  encoded = tf.io.encode_jpeg(image, quality=90)
  decoded = tf.io.decode_jpeg(encoded, channels=3).numpy()
  # Inside a window libjpeg's crop decode equals the full decode up to chroma
  # upsampling at the window's edges.
  part = tf.image.decode_and_crop_jpeg(encoded, [8, 16, 40, 48], channels=3).numpy()
  assert part.shape == (40, 48, 3)
  assert np.abs(part.astype(int) - decoded[8:48, 16:64].astype(int)).mean() < 1.0
  spec = A.ViewSpec(image_size=24)
  all_flips = []
  for seed in ([7, 3], [7, 4], [-5, 0], [9, 9]):
    views, flips = _decode_views(encoded, seed, spec)
    all_flips.extend(flips)
    assert views.shape == (2, 24, 24, 3) and views.dtype == np.float32
    ref = _reference_views(decoded, seed, flips, spec)
    assert np.abs(views - ref).mean(axis=(1, 2, 3)).max() < 2.0  # 0-255 scale
    assert np.abs(views[0] - views[1]).mean() > 5.0  # two different crops
  assert 0 < sum(all_flips) < len(all_flips)
  # Other formats: decoded whole, then cropped (exactly the image's pixels).
  views, flips = _decode_views(tf.io.encode_png(image), [7, 3], spec)
  np.testing.assert_allclose(views, _reference_views(image, [7, 3], flips, spec), atol=1e-3)


def test_decoded_views_with_crop_and_flip_disabled_are_the_whole_image_resized():
  rng = np.random.default_rng(6)
  image = rng.integers(0, 256, [30, 40, 3]).astype(np.uint8)
  spec = A.ViewSpec(image_size=24, crop=False, flip=False)
  views, _ = _decode_views(tf.io.encode_png(image), [1, 2], spec)
  ref = tf.image.resize(image.astype(np.float32), [24, 24], method="bicubic",
                        antialias=False).numpy()
  np.testing.assert_allclose(views, np.stack([ref] * 2), atol=1e-3)


def test_crop_boxes_of_the_views_are_independent_draws_of_the_op():
  """Per-view seeds give the op's distribution, independently for the two views."""
  spec = A.ViewSpec(image_size=32)
  shape = tf.constant([350, 400, 3])

  def boxes(seeds, view):
    ds = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda s: tf.stack([t[:2] for t in A.crop_box(shape, s, view, spec)]))
    return next(iter(ds.batch(len(seeds)))).numpy()  # [N, 2 (begin, size), 2]

  seeds = np.stack([np.full(2000, 123456789), np.arange(2000)], 1).astype(np.int64)
  first, second = boxes(seeds, 0), boxes(seeds, 1)
  area = lambda b: b[:, 1, 0] * b[:, 1, 1]  # noqa: E731
  assert abs(stats.spearmanr(area(first), area(second))[0]) < 0.1
  ref = _tf_op_windows(350, 400, 2000, seed=11)
  for mine in (first, second):
    assert stats.ks_2samp(area(mine), ref[:, 2] * ref[:, 3]).pvalue > 1e-3
    assert stats.ks_2samp(mine[:, 0, 1], ref[:, 1]).pvalue > 1e-3
  # A view's box depends on its example's seed only.
  np.testing.assert_array_equal(boxes(seeds[::-1], 0), first[::-1])


def test_view_distribution_rates():
  """Colour jitter ~0.8, grayscale ~0.2, blur ~0.5, flip ~0.5 of the views."""
  spec = A.ViewSpec(image_size=16, color_strength=1.0, blur=True, blur_kernel_fraction=0.25)
  n = 2000
  rng = np.random.default_rng(7)
  views = tf.constant(rng.uniform(0.05, 0.95, [n, 16, 16, 3]).astype(np.float32))
  u = _uniforms(n, spec, seed=8)
  out = A.finish_views(views, u, spec).numpy()
  gray = np.all(np.abs(out - out[..., :1]) < 1e-6, axis=(1, 2, 3))
  no_blur = A.finish_views(views, u, A.ViewSpec(image_size=16, color_strength=1.0)).numpy()
  blurred = np.abs(out - no_blur).max(axis=(1, 2, 3)) > 1e-6
  # Which draws a view applies is checked against the reference pipeline above; here
  # the rates of the draws.
  params = {k: v.numpy() for k, v in A.color_params(u, spec).items()}
  # (A sigma near 0.1 is a near-identity kernel: no visible change.)
  assert not (blurred & ~params["blur"]).any()
  assert blurred[params["blur"] & (params["sigma"] > 0.3)].all()
  # grayscale happens 0.8 x 0 + 0.2 of the time: jitter never yields an exact gray.
  for name, observed, p in [("gray", gray, 0.2), ("blur", params["blur"], 0.5),
                            ("colour", params["color"], 0.8),
                            ("flip", A.flip_draw(u, spec).numpy(), 0.5)]:
    sd = np.sqrt(p * (1 - p) / n)
    assert abs(observed.mean() - p) < 4 * sd, (name, observed.mean())
  # Per-image sigma ~ U(0.1, 2.0).
  assert stats.kstest((params["sigma"] - 0.1) / 1.9, "uniform").pvalue > 1e-3


def test_colour_factors_distribution():
  spec = A.ViewSpec(image_size=16, color_strength=1.0)
  p = {k: v.numpy() for k, v in A.color_params(_uniforms(4000, spec, seed=9), spec).items()}
  for key, lo, hi in [("brightness", 0.2, 1.8), ("contrast", 0.2, 1.8),
                      ("saturation", 0.2, 1.8), ("hue", -0.2, 0.2)]:
    assert p[key].min() >= lo and p[key].max() <= hi
    assert stats.kstest((p[key] - lo) / (hi - lo), "uniform").pvalue > 1e-3, key
  # A uniform random order of the four operations: 24 permutations about equally often.
  codes = p["order"] @ np.array([64, 16, 4, 1])
  counts = np.unique(codes, return_counts=True)[1]
  assert len(counts) == 24 and stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("size", [24, 32, 48])
def test_crop_disabled_resizes_the_whole_image(size):
  spec = A.ViewSpec(image_size=size, crop=False, flip=False, color_jitter_prob=0.0,
                    grayscale_prob=0.0)
  images = _digits_like(2)
  out = _fixed_batch(images, _uniforms(2, spec, views=1), spec).numpy()
  ref = tf.image.resize(tf.cast(images, tf.float32) / 255.0, [size, size], method="bicubic",
                        antialias=False).numpy()
  # (tf.image reads the kernel from a 1024-entry table: within 0.25 on the 0-255 scale.)
  np.testing.assert_allclose(out[:, 0], np.clip(ref, 0.0, 1.0), atol=1e-3)


def test_eval_view():
  rng = np.random.default_rng(10)
  image = rng.integers(0, 256, [32, 32, 3]).astype(np.uint8)
  # 32 px datasets: the image itself.
  np.testing.assert_allclose(A.eval_view(tf.constant(image), 32, crop=False).numpy(),
                             image / 255.0, atol=1e-6)
  big = rng.integers(0, 256, [80, 100, 3]).astype(np.uint8)
  out = A.eval_view(tf.io.encode_png(big), 56, crop=True).numpy()
  y, x, h, w = A.eval_window(80, 100).numpy()
  ref = tf.image.resize(big[y:y + h, x:x + w].astype(np.float32) / 255.0, [56, 56],
                        method="bicubic", antialias=False).numpy()
  np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-5)
  assert out.shape == (56, 56, 3)


def test_spec_from_config():
  config = base.get_config()
  config.augment.blur = True
  config.augment.blur_on = "data"
  assert A.ViewSpec.pretrain(config).blur
  config.augment.blur_on = "device"
  assert not A.ViewSpec.pretrain(config).blur
  flip_only = A.ViewSpec.crop_flip(config)
  assert flip_only.color_jitter_prob == 0 and flip_only.grayscale_prob == 0
  assert flip_only.crop and flip_only.flip
