"""`tf.random.stateless_uniform` for a whole batch of seeds at once.

TensorFlow's stateless ops take one seed per call, so per-example random numbers cost
one op per example, which in a tf.data map is ~30-50 us of CPU per element: more than
augmenting a 32 px image. This computes, with element-wise integer ops that XLA
compiles into one loop, exactly what `tf.random.stateless_uniform(shape, seed=s)`
returns on CPU (alg "auto_select" = Philox-4x32-10) for every seed s of a batch:
  - the seed (two int64 words) is hashed by one Philox call (fixed key) into the key
    and the high counter words of the stream;
  - block j of the stream is Philox(counter = (j, 0, c2, c3), key): 4 uint32 words;
  - a word w becomes the float32 with mantissa w & 0x7fffff in [1, 2), minus 1.
TensorFlow has no vectorised form of this op; tests check it against the op itself.
"""

from __future__ import annotations

import tensorflow as tf

_MUL = (0xD2511F53, 0xCD9E8D57)  # Philox-4x32 round multipliers
_BUMP = (0x9E3779B9, 0xBB67AE85)  # key schedule (Weyl sequence) increments
_SEED_KEY = (0x3EC8F720, 0x02461E29)  # TensorFlow's fixed key for hashing seeds
_LOW = 0xFFFFFFFF
_ROUNDS = 10


def _u64(value: int) -> tf.Tensor:
  return tf.constant(value, tf.uint64)


def _mul_hi_lo(a: tf.Tensor, m: int) -> tuple[tf.Tensor, tf.Tensor]:
  p = a * _u64(m)  # a < 2^32, so the product fits in 64 bits
  return tf.bitwise.right_shift(p, _u64(32)), tf.bitwise.bitwise_and(p, _u64(_LOW))


def philox4x32(counter, key):
  """Philox-4x32-10 of counter (4 words) under key (2 words); words are uint64 < 2^32.

  All words broadcast together; returns the 4 output words.
  """
  c0, c1, c2, c3 = counter
  k0, k1 = key
  xor = tf.bitwise.bitwise_xor
  for r in range(_ROUNDS):
    hi0, lo0 = _mul_hi_lo(c0, _MUL[0])
    hi1, lo1 = _mul_hi_lo(c2, _MUL[1])
    c0, c1, c2, c3 = xor(xor(hi1, c1), k0), lo1, xor(xor(hi0, c3), k1), lo0
    if r < _ROUNDS - 1:
      k0 = tf.bitwise.bitwise_and(k0 + _u64(_BUMP[0]), _u64(_LOW))
      k1 = tf.bitwise.bitwise_and(k1 + _u64(_BUMP[1]), _u64(_LOW))
  return c0, c1, c2, c3


def stateless_uniform(seeds: tf.Tensor, num: int) -> tf.Tensor:
  """Uniforms in [0, 1): float32 [B, num], row b = tf.random.stateless_uniform([num], seeds[b]).

  Args:
    seeds: int64 (or int32) [B, 2].
    num: numbers per seed (static).
  """
  words = tf.bitcast(tf.cast(seeds, tf.int64), tf.uint64)
  low = lambda w: tf.bitwise.bitwise_and(w, _u64(_LOW))  # noqa: E731
  high = lambda w: tf.bitwise.right_shift(w, _u64(32))  # noqa: E731
  s0, s1 = words[:, 0], words[:, 1]
  fixed = tf.zeros_like(s0)
  k0, k1, c2, c3 = philox4x32((low(s0), high(s0), low(s1), high(s1)),
                              (fixed + _SEED_KEY[0], fixed + _SEED_KEY[1]))
  blocks = -(-num // 4)
  j = tf.cast(tf.range(blocks, dtype=tf.int64), tf.uint64)[None, :]  # [1, J]
  zero = tf.zeros([tf.shape(s0)[0], blocks], tf.uint64)  # [B, J]
  out = philox4x32((zero + j, zero, zero + c2[:, None], zero + c3[:, None]),
                   (zero + k0[:, None], zero + k1[:, None]))
  one = 127 << 23  # float32 1.0: exponent 0, the mantissa from the word
  floats = [tf.bitcast(tf.cast(tf.bitwise.bitwise_or(tf.bitwise.bitwise_and(w, _u64(0x7FFFFF)),
                                                     _u64(one)), tf.uint32), tf.float32) - 1.0
            for w in out]
  # Word t of block j is number 4 j + t. Interleaved by a select over a broadcast index,
  # not a stack: XLA CPU compiles a stack along the last axis ~2x slower.
  t = tf.range(4)
  x = [w[..., None] for w in floats]
  x = tf.where(t == 0, x[0], tf.where(t == 1, x[1], tf.where(t == 2, x[2], x[3])))
  return tf.reshape(x, [-1, 4 * blocks])[:, :num]
