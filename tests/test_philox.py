"""simclr_jax.philox against TensorFlow's own stateless uniform op, seed by seed."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_jax import augment as A
from simclr_jax import philox

_SEEDS = tf.constant([[0, 0], [1, 2], [-5, 2 ** 62], [1145410371336829455, 77],
                      [-(2 ** 63), 2 ** 63 - 1]], tf.int64)


@pytest.mark.parametrize("num", [1, 4, 7, 826])
def test_batched_uniforms_equal_tf_stateless_uniform_per_seed(num):
  expected = np.stack([tf.random.stateless_uniform([num], seed=s).numpy() for s in _SEEDS])
  np.testing.assert_array_equal(philox.stateless_uniform(_SEEDS, num).numpy(), expected)
  compiled = tf.function(philox.stateless_uniform, jit_compile=True)
  np.testing.assert_array_equal(compiled(_SEEDS, num).numpy(), expected)


def test_int32_seeds_give_the_int64_seeds_numbers():
  seeds = tf.constant([[3, 9], [-1, 12345]], tf.int32)
  expected = np.stack([tf.random.stateless_uniform([10], seed=s).numpy() for s in seeds])
  np.testing.assert_array_equal(philox.stateless_uniform(seeds, 10).numpy(), expected)


@pytest.mark.parametrize("crop_attempts", [True, False])
def test_batched_view_uniforms_equal_per_example_ones(crop_attempts):
  spec = A.ViewSpec(image_size=32)
  batched = A.view_uniforms(_SEEDS, 2, spec, crop_attempts=crop_attempts).numpy()
  k = spec.num_uniforms if crop_attempts else spec.num_uniforms - 4 * spec.max_attempts
  assert batched.shape == (5, 2, k)
  for b, seed in enumerate(_SEEDS):
    np.testing.assert_array_equal(
        batched[b], A.view_uniforms(seed, 2, spec, crop_attempts=crop_attempts).numpy())
  assert 0.0 <= batched.min() and batched.max() < 1.0
