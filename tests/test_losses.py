"""Tests of simclr_jax.losses.nt_xent against a float64 NumPy transcription of the paper.

Run as a script (`python tests/test_losses.py IN.npz OUT.npz`) this file is the
multi-device worker: the tests start it in a subprocess with 8 host CPU devices.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from simclr_jax.losses import nt_xent

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEVICE_COUNTS = (2, 4, 8)
_N_PER_DEVICE = 3
_DIM = 5  # < 2n, so a [2N, d] array is smaller than the [2n, 2N] logits
_IN_DIM = 4
_TAU = 0.2


# ------------------------------------------------------------------------------------
# Independent reference: the paper's formula, float64, explicit (2N) x (2N) matrix.


def reference_nt_xent(z_a, z_b, tau):
  """Returns (L, contrast_acc, contrast_entropy) computed anchor by anchor."""
  z = np.concatenate([z_a, z_b]).astype(np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  two_n = z.shape[0]
  n = two_n // 2
  sim = z @ z.T
  total, correct, entropy = 0.0, 0, 0.0
  for i in range(two_n):
    j = (i + n) % two_n
    others = [k for k in range(two_n) if k != i]
    denom = sum(np.exp(sim[i, k] / tau) for k in others)
    total += -np.log(np.exp(sim[i, j] / tau) / denom)
    probs = np.array([np.exp(sim[i, k] / tau) / denom for k in others])
    entropy += -np.sum(probs * np.log(probs))
    correct += others[int(np.argmax(sim[i, others]))] == j
  return total / two_n, correct / two_n, entropy / two_n


def numerical_grad(fn, x, h=1e-6):
  """Central differences of a scalar float64 function of array x."""
  grad = np.zeros_like(x, dtype=np.float64)
  for idx in np.ndindex(x.shape):
    plus, minus = x.astype(np.float64), x.astype(np.float64)
    plus[idx] += h
    minus[idx] -= h
    grad[idx] = (fn(plus) - fn(minus)) / (2 * h)
  return grad


def _pairs(seed, n, d, scale_spread=True):
  rng = np.random.default_rng(seed)
  z_a = rng.normal(size=(n, d)).astype(np.float32)
  z_b = (z_a + 0.7 * rng.normal(size=(n, d))).astype(np.float32)
  if scale_spread:  # rows of very different lengths: normalisation must remove them
    z_a *= rng.uniform(0.1, 10.0, size=(n, 1)).astype(np.float32)
    z_b *= rng.uniform(0.1, 10.0, size=(n, 1)).astype(np.float32)
  return z_a, z_b


# ------------------------------------------------------------------------------------
# Single device.


@pytest.mark.parametrize("n,d,tau", [
    (1, 4, 0.5), (2, 3, 0.5), (4, 3, 0.1), (8, 16, 0.5), (16, 8, 0.05), (5, 128, 1.0)])
def test_matches_reference(n, d, tau):
  z_a, z_b = _pairs(n * 100 + d, n, d)
  loss, aux = jax.jit(lambda a, b: nt_xent(a, b, temperature=tau))(z_a, z_b)
  ref_loss, ref_acc, ref_entropy = reference_nt_xent(z_a, z_b, tau)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(aux["contrast_acc"], ref_acc, atol=1e-7)
  np.testing.assert_allclose(aux["contrast_entropy"], ref_entropy, rtol=1e-5, atol=1e-6)


def test_reference_sanity():
  # Orthogonal views of 2 examples: every logit is 0 except the positives' 1/tau.
  tau = 0.5
  z_a = np.eye(4)[:2]
  z_b = np.eye(4)[:2]
  ref_loss, ref_acc, _ = reference_nt_xent(z_a, z_b, tau)
  np.testing.assert_allclose(ref_loss, -np.log(np.e**2 / (np.e**2 + 2)))
  assert ref_acc == 1.0


def test_official_scaling_doubles():
  z_a, z_b = _pairs(1, 6, 8)
  loss, aux = nt_xent(z_a, z_b, temperature=0.1)
  loss2, aux2 = nt_xent(z_a, z_b, temperature=0.1, official_scaling=True)
  np.testing.assert_allclose(loss2, 2 * loss, rtol=1e-7)
  np.testing.assert_allclose(loss2, 2 * reference_nt_xent(z_a, z_b, 0.1)[0], rtol=1e-5)
  assert aux2 == aux


def test_invariances():
  z_a, z_b = _pairs(2, 7, 6, scale_spread=False)
  loss = nt_xent(z_a, z_b, temperature=0.3)[0]
  perm = np.random.default_rng(0).permutation(7)
  scales = np.random.default_rng(1).uniform(0.01, 100.0, size=(7, 1)).astype(np.float32)
  np.testing.assert_allclose(nt_xent(z_b, z_a, temperature=0.3)[0], loss, rtol=1e-6)
  np.testing.assert_allclose(
      nt_xent(z_a[perm], z_b[perm], temperature=0.3)[0], loss, rtol=1e-6)
  np.testing.assert_allclose(
      nt_xent(z_a * scales, z_b, temperature=0.3)[0], loss, rtol=1e-5)
  # Pairing matters: shuffling one view only must change the loss.
  assert abs(nt_xent(z_a, z_b[perm], temperature=0.3)[0] - loss) > 1e-3


def test_low_precision_inputs_use_float32_logits():
  z_a, z_b = _pairs(3, 8, 16)
  a16, b16 = jnp.asarray(z_a, jnp.bfloat16), jnp.asarray(z_b, jnp.bfloat16)
  loss, aux = nt_xent(a16, b16, temperature=0.1)
  assert loss.dtype == jnp.float32 and aux["contrast_entropy"].dtype == jnp.float32
  ref = reference_nt_xent(np.asarray(a16, np.float32), np.asarray(b16, np.float32), 0.1)
  np.testing.assert_allclose(loss, ref[0], rtol=1e-5)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_gradient_matches_finite_differences(tau):
  n, d = 4, 3
  z_a, z_b = _pairs(4, n, d)
  grad_a, grad_b = jax.grad(
      lambda a, b: nt_xent(a, b, temperature=tau)[0], argnums=(0, 1))(z_a, z_b)
  num_a = numerical_grad(lambda a: reference_nt_xent(a, z_b, tau)[0], z_a)
  num_b = numerical_grad(lambda b: reference_nt_xent(z_a, b, tau)[0], z_b)
  scale = max(np.abs(num_a).max(), np.abs(num_b).max())
  np.testing.assert_allclose(grad_a, num_a, rtol=1e-4, atol=1e-5 * scale)
  np.testing.assert_allclose(grad_b, num_b, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("spread", [1e-6, 0.0])
def test_nearly_identical_and_zero_embeddings_are_finite(spread):
  n, d, tau = 8, 16, 0.05
  rng = np.random.default_rng(5)
  base = rng.normal(size=(1, d))
  z_a = (base + spread * rng.normal(size=(n, d))).astype(np.float32)
  z_b = (base + spread * rng.normal(size=(n, d))).astype(np.float32)
  for a, b in ((z_a, z_b), (np.zeros_like(z_a), np.zeros_like(z_b))):
    (loss, aux), grads = jax.value_and_grad(
        lambda a, b: nt_xent(a, b, temperature=tau), argnums=(0, 1), has_aux=True)(a, b)
    # All 2N - 1 candidates (nearly) tie: the loss is log(2N - 1), the entropy too.
    np.testing.assert_allclose(loss, np.log(2 * n - 1), rtol=1e-3)
    np.testing.assert_allclose(aux["contrast_entropy"], np.log(2 * n - 1), rtol=1e-3)
    for g in grads:
      assert np.all(np.isfinite(g))
    assert np.isfinite(aux["contrast_acc"])


def test_bad_inputs():
  z = np.ones((4, 3), np.float32)
  with pytest.raises(ValueError, match="temperature"):
    nt_xent(z, z, temperature=0.0)
  with pytest.raises(ValueError, match=r"\(4, 3\).*\(5, 3\)"):
    nt_xent(z, np.ones((5, 3), np.float32), temperature=0.1)


# ------------------------------------------------------------------------------------
# Several devices (subprocess with 8 host CPU devices).


def _max_aval_size(jaxpr) -> tuple[int, set]:
  """Largest array size among all values of a jaxpr and its sub-jaxprs, with shapes."""
  best, shapes = 0, set()

  def visit(j):
    nonlocal best
    j = getattr(j, "jaxpr", j)  # ClosedJaxpr -> Jaxpr
    for eqn in j.eqns:
      for var in list(eqn.invars) + list(eqn.outvars):
        shape = getattr(getattr(var, "aval", None), "shape", None)
        if shape is not None:
          size = int(np.prod(shape))
          shapes.add(tuple(shape))
          best = max(best, size)
      for param in eqn.params.values():
        for p in param if isinstance(param, (tuple, list)) else (param,):
          if hasattr(p, "eqns") or hasattr(getattr(p, "jaxpr", None), "eqns"):
            visit(p)

  visit(jaxpr)
  return best, shapes


def _worker(in_path: str, out_path: str) -> None:
  """Per-device losses, aux and gradients for each device count in _DEVICE_COUNTS."""
  data = dict(np.load(in_path))
  out = {}
  for k in _DEVICE_COUNTS:
    mesh = jax.make_mesh((k,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:k])

    def z_body(z_a, z_b):
      (loss, aux), grads = jax.value_and_grad(
          lambda a, b: nt_xent(a, b, temperature=_TAU, axis_name="batch"),
          argnums=(0, 1), has_aux=True)(z_a, z_b)
      per_device = (loss[None], aux["contrast_acc"][None],
                    aux["contrast_entropy"][None])
      return per_device, grads, jax.lax.pmean(loss, "batch")

    z_fn = jax.jit(jax.shard_map(
        z_body, mesh=mesh, in_specs=(P("batch"), P("batch")),
        out_specs=(P("batch"), P("batch"), P()), check_vma=False))

    def w_body(x_a, x_b, w):
      def loss_fn(w):
        mm = lambda x: jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST)
        return nt_xent(mm(x_a), mm(x_b), temperature=_TAU, axis_name="batch")[0]
      grad = jax.grad(loss_fn)(w)
      return jax.lax.pmean(grad, "batch"), grad[None]

    w_fn = jax.jit(jax.shard_map(
        w_body, mesh=mesh, in_specs=(P("batch"), P("batch"), P()),
        out_specs=(P(), P("batch")), check_vma=False))

    z_a, z_b = data[f"z_a_{k}"], data[f"z_b_{k}"]
    (losses, accs, entropies), (g_a, g_b), pmean_loss = z_fn(z_a, z_b)
    w_grad, w_grads_per_device = w_fn(data[f"x_a_{k}"], data[f"x_b_{k}"], data["w"])
    max_size, shapes = _max_aval_size(jax.make_jaxpr(z_fn)(z_a, z_b))
    n_global = z_a.shape[0]
    out.update({
        f"losses_{k}": losses, f"accs_{k}": accs, f"entropies_{k}": entropies,
        f"pmean_loss_{k}": pmean_loss, f"grad_a_{k}": g_a, f"grad_b_{k}": g_b,
        f"w_grad_{k}": w_grad, f"w_grads_per_device_{k}": w_grads_per_device,
        f"max_size_{k}": max_size,
        f"has_local_logits_{k}": (2 * _N_PER_DEVICE, 2 * n_global) in shapes,
    })
  np.savez(out_path, **out)


@pytest.fixture(scope="module")
def multi_device(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("nt_xent")
  rng = np.random.default_rng(7)
  data = {"w": rng.normal(size=(_IN_DIM, _DIM)).astype(np.float32)}
  for k in _DEVICE_COUNTS:
    n_global = k * _N_PER_DEVICE
    data[f"z_a_{k}"], data[f"z_b_{k}"] = _pairs(k, n_global, _DIM)
    data[f"x_a_{k}"] = rng.normal(size=(n_global, _IN_DIM)).astype(np.float32)
    data[f"x_b_{k}"] = (data[f"x_a_{k}"] + 0.5 * rng.normal(size=(n_global, _IN_DIM))
                       ).astype(np.float32)
  in_path, out_path = str(tmp / "in.npz"), str(tmp / "out.npz")
  np.savez(in_path, **data)
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO_ROOT, env.get("PYTHONPATH")]))
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), in_path, out_path],
                        cwd=_REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return data, dict(np.load(out_path))


@pytest.mark.parametrize("k", _DEVICE_COUNTS)
def test_multi_device_loss_and_aux_equal_single_device(multi_device, k):
  data, out = multi_device
  z_a, z_b = data[f"z_a_{k}"], data[f"z_b_{k}"]
  loss, aux = nt_xent(z_a, z_b, temperature=_TAU)
  ref_loss, ref_acc, ref_entropy = reference_nt_xent(z_a, z_b, _TAU)
  assert out[f"losses_{k}"].shape == (k,)
  assert np.ptp(out[f"losses_{k}"]) > 1e-4  # each device really holds its own share
  np.testing.assert_allclose(out[f"losses_{k}"].mean(), loss, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out[f"pmean_loss_{k}"], loss, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out[f"losses_{k}"].mean(), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(out[f"accs_{k}"].mean(), aux["contrast_acc"], atol=1e-6)
  np.testing.assert_allclose(out[f"accs_{k}"].mean(), ref_acc, atol=1e-6)
  np.testing.assert_allclose(
      out[f"entropies_{k}"].mean(), aux["contrast_entropy"], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out[f"entropies_{k}"].mean(), ref_entropy, rtol=1e-5)


@pytest.mark.parametrize("k", _DEVICE_COUNTS)
def test_multi_device_gradients_equal_single_device(multi_device, k):
  data, out = multi_device
  z_a, z_b = data[f"z_a_{k}"], data[f"z_b_{k}"]
  g_a, g_b = jax.grad(
      lambda a, b: nt_xent(a, b, temperature=_TAU)[0], argnums=(0, 1))(z_a, z_b)
  # A device's gradient w.r.t. its own shard is that of the sum of the k device losses,
  # i.e. k times the gradient of their mean, L.
  np.testing.assert_allclose(out[f"grad_a_{k}"] / k, g_a, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out[f"grad_b_{k}"] / k, g_b, rtol=1e-5, atol=1e-7)

  w, x_a, x_b = data["w"], data[f"x_a_{k}"], data[f"x_b_{k}"]
  mm = lambda x, w: jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST)
  g_w = jax.grad(lambda w: nt_xent(mm(x_a, w), mm(x_b, w), temperature=_TAU)[0])(w)
  np.testing.assert_allclose(out[f"w_grad_{k}"], g_w, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
      out[f"w_grads_per_device_{k}"].mean(axis=0), g_w, rtol=1e-5, atol=1e-7)
  # The replicated gradient really differs between devices before the pmean.
  assert np.ptp(out[f"w_grads_per_device_{k}"], axis=0).max() > 1e-4


@pytest.mark.parametrize("k", _DEVICE_COUNTS)
def test_multi_device_logits_are_local_rows_only(multi_device, k):
  _, out = multi_device
  n, n_global = _N_PER_DEVICE, k * _N_PER_DEVICE
  assert out[f"has_local_logits_{k}"]
  # Forward and backward: nothing larger than the [2n, 2N] logits, never [2N, 2N].
  assert out[f"max_size_{k}"] == (2 * n) * (2 * n_global)


if __name__ == "__main__":
  _worker(sys.argv[1], sys.argv[2])
