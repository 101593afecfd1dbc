"""Gaussian blur of SimCLR views on the accelerator, inside the jitted train step.

The official TF2 code blurs each batch on the accelerator (one sigma per batch and
view); the paper describes a sigma per image, which is what this does, with the
distribution of the tf.data blur (`simclr_jax.augment`, blur_on = "data"): with
probability `prob`, a separable Gaussian of sigma ~ U(sigma_range) px over
2 * (int(kernel_fraction * H) // 2) + 1 taps (23 at 224 px), SAME zero padding, then a
clip to [0, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def kernel_radius(image_size: int, kernel_fraction: float) -> int:
  """Half-width of the kernel: its side int(fraction * size) made odd (11 at 224 px)."""
  return int(kernel_fraction * image_size) // 2


def gaussian_kernels(sigma: jax.Array, radius: int) -> jax.Array:
  """Normalised 1-D Gaussian taps [..., 2 radius + 1] for sigma [...] in pixels."""
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  k = jnp.exp(-jnp.square(x) / (2.0 * jnp.square(sigma[..., None].astype(jnp.float32))))
  return k / jnp.sum(k, axis=-1, keepdims=True)


def gaussian_blur(images: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """Blurs images [B, H, W, C] with per-image sigma [B] (separable, zero padded).

  A sum of 2 radius + 1 shifted copies per axis, which XLA fuses into one pass;
  computed in float32, returned in the input dtype.
  """
  dtype = images.dtype
  x = images.astype(jnp.float32)
  kernel = gaussian_kernels(sigma, radius)  # [B, K]
  _, h, w, _ = x.shape
  taps = 2 * radius + 1
  xp = jnp.pad(x, ((0, 0), (radius, radius), (0, 0), (0, 0)))
  x = sum(kernel[:, j, None, None, None] * xp[:, j:j + h] for j in range(taps))
  xp = jnp.pad(x, ((0, 0), (0, 0), (radius, radius), (0, 0)))
  x = sum(kernel[:, j, None, None, None] * xp[:, :, j:j + w] for j in range(taps))
  return x.astype(dtype)


def random_gaussian_blur(rng: jax.Array, images: jax.Array, *, prob: float,
                         sigma_range: tuple[float, float],
                         kernel_fraction: float) -> jax.Array:
  """Blurs each image of [B, H, W, C] with probability `prob`, sigma ~ U(sigma_range).

  jit-compatible (static shapes: every image is blurred, the unselected ones are
  then replaced by their input). The blurred images are clipped to [0, 1].
  """
  radius = kernel_radius(images.shape[1], kernel_fraction)
  if radius == 0 or prob <= 0.0:
    return images
  key_apply, key_sigma = jax.random.split(rng)
  batch = images.shape[0]
  apply = jax.random.uniform(key_apply, (batch,)) < prob
  lo, hi = sigma_range
  sigma = jax.random.uniform(key_sigma, (batch,), minval=lo, maxval=hi)
  blurred = jnp.clip(gaussian_blur(images, sigma, radius), 0.0, 1.0)
  return jnp.where(apply[:, None, None, None], blurred, images)
