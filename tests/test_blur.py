"""Tests of the device-side blur (simclr_jax.blur) and its agreement with the tf.data one."""

import functools

import numpy as np
from scipy import stats

import jax
import jax.numpy as jnp
import tensorflow as tf

from simclr_jax import augment
from simclr_jax import blur


def _numpy_blur(x, sigma, radius):
  """Direct 2-D convolution with the outer product kernel, zero padding, float64."""
  t = np.arange(-radius, radius + 1)
  k = np.exp(-t ** 2 / (2.0 * sigma ** 2))
  k /= k.sum()
  k2 = np.outer(k, k)
  h, w = x.shape[:2]
  xp = np.pad(x.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)))
  out = np.zeros(x.shape, np.float64)
  for a in range(2 * radius + 1):
    for b in range(2 * radius + 1):
      out += k2[a, b] * xp[a:a + h, b:b + w]
  return out


def test_kernel_size_23_taps_at_224px():
  assert blur.kernel_radius(224, 0.1) == 11  # 2 * 11 + 1 = 23 taps, as the official code
  assert blur.kernel_radius(32, 0.1) == 1
  assert blur.kernel_radius(224, 0.1) == augment.blur_radius(224, 0.1)


def test_gaussian_blur_matches_numpy_per_image_sigma():
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, [3, 20, 17, 3]).astype(np.float32)
  sigma = np.array([0.3, 1.0, 2.0], np.float32)
  out = np.asarray(blur.gaussian_blur(jnp.asarray(images), jnp.asarray(sigma), 4))
  for i in range(3):
    np.testing.assert_allclose(out[i], _numpy_blur(images[i], sigma[i], 4), atol=1e-5)


def test_device_blur_equals_tf_data_blur():
  rng = np.random.default_rng(1)
  images = rng.uniform(0, 1, [4, 24, 24, 3]).astype(np.float32)
  sigma = np.array([0.1, 0.7, 1.3, 1.9], np.float32)
  spec = augment.ViewSpec(image_size=24, blur=True, blur_kernel_fraction=0.5)
  params = {"blur": tf.constant([True, True, False, True]), "sigma": tf.constant(sigma)}
  tf_out = augment.blur_views(tf.constant(images), params, spec).numpy()
  radius = blur.kernel_radius(24, 0.5)
  jax_out = np.clip(np.asarray(blur.gaussian_blur(jnp.asarray(images), jnp.asarray(sigma),
                                                  radius)), 0, 1)
  for i in (0, 1, 3):
    np.testing.assert_allclose(jax_out[i], tf_out[i], atol=1e-6)
  np.testing.assert_array_equal(tf_out[2], images[2])  # not drawn: untouched


def _random_blur(rng, images, prob=0.5, sigma_range=(0.1, 2.0), kernel_fraction=0.5):
  return jax.jit(functools.partial(blur.random_gaussian_blur, prob=prob,
                                   sigma_range=sigma_range,
                                   kernel_fraction=kernel_fraction))(rng, images)


def test_random_blur_rate_and_per_image_sigma_distribution():
  # Delta images: the blurred centre row is k0 * k, so k1 / k0 = exp(-1 / (2 sigma^2))
  # recovers each image's sigma.
  n, size = 3000, 17
  images = np.zeros([n, size, size, 1], np.float32)
  images[:, size // 2, size // 2] = 1.0
  out = np.asarray(_random_blur(jax.random.PRNGKey(0), jnp.asarray(images)))
  assert out.shape == images.shape and out.dtype == np.float32
  changed = np.abs(out - images).max(axis=(1, 2, 3)) > 0
  centre = out[:, size // 2, size // 2, 0]
  side = out[:, size // 2, size // 2 + 1, 0]
  applied = side > 0.0  # even sigma = 0.1 puts exp(-50) on the neighbours
  assert (applied == changed).all()
  p = 0.5
  assert abs(applied.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
  ratio = side[applied].astype(np.float64) / centre[applied]
  sigma = np.sqrt(-1.0 / (2.0 * np.log(ratio)))
  assert sigma.min() > 0.099 and sigma.max() < 2.001
  assert stats.kstest((sigma - 0.1) / 1.9, "uniform").pvalue > 1e-3


def test_random_blur_keeps_unselected_images_and_range():
  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.uniform(0, 1, [64, 32, 32, 3]).astype(np.float32))
  out = np.asarray(_random_blur(jax.random.PRNGKey(1), images, kernel_fraction=0.1))
  same = np.all(out == np.asarray(images), axis=(1, 2, 3))
  assert 0 < same.sum() < 64
  assert out.min() >= 0.0 and out.max() <= 1.0
  # prob 0 or a kernel of one tap: the identity.
  np.testing.assert_array_equal(_random_blur(jax.random.PRNGKey(1), images, prob=0.0), images)
  np.testing.assert_array_equal(
      _random_blur(jax.random.PRNGKey(1), images, kernel_fraction=0.01), images)
  # Different keys draw different selections.
  other = np.asarray(_random_blur(jax.random.PRNGKey(2), images, kernel_fraction=0.1))
  assert not np.array_equal(other, out)


def test_bfloat16_images_keep_their_dtype():
  images = jnp.ones([2, 16, 16, 3], jnp.bfloat16) * 0.5
  out = _random_blur(jax.random.PRNGKey(3), images, prob=1.0, kernel_fraction=0.25)
  assert out.dtype == jnp.bfloat16 and out.shape == images.shape
