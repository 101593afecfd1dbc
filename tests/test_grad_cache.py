"""The gradient cache (simclr_jax/grad_cache.py): exact chunked NT-Xent gradients.

What must hold (the README's "Batch-size scaling"): for the same embeddings, the chunked
loss and its gradient w.r.t. the embeddings are the unchunked ones; the parameter
gradients are the exact gradients of the network whose BN statistics are computed per
chunk, hence equal to the unchunked step's for a network without batch-dependent layers;
and on k devices the chunked step equals the chunked step on one device for the same
global batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import base
from simclr_jax import grad_cache
from simclr_jax import losses
from simclr_jax import models
from simclr_jax import parallel
from simclr_jax import train_step as ts
from tests.subproc import run_worker
from tests.workers.grad_cache_devices import ToySimCLR

PAIRS = 8  # local (= global: the parent process has one device) pairs
SIZE = 8  # image side, px
CLASSES = 10


def config(chunks: int):
  c = base.get_config()
  c.batch_size = PAIRS
  c.data.image_size = SIZE
  c.model.update(depth=18, width_multiplier=0.125, cifar_stem=True, proj_dim=16)
  c.loss.update(temperature=0.2, chunks=chunks, official_scaling=False)  # the paper's L
  c.optim.weight_decay = 1e-2  # large enough for the probe's L2 gradient to show
  return c


def on_one_device(fn):
  """fn as the train step runs it: per device inside shard_map (axis AXIS), 1 device."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P(), out_specs=P(),
                               check_vma=False))


def batch(seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(2 * PAIRS, SIZE, SIZE, 3)).astype(np.float32)
  labels = rng.integers(0, CLASSES, PAIRS).astype(np.int32)
  return images, np.concatenate([labels, labels])


def init(model):
  # create_train_state compiles the initialiser once (model.init op by op took 43 s of CPU
  # for the ResNet, against 9 s).
  state = ts.create_train_state(jax.random.PRNGKey(1), model, optax.identity(), SIZE)
  return state.params, state.batch_stats


def assert_trees_close(got, want, rtol=1e-4, atol=1e-6):
  got_leaves = jax.tree_util.tree_leaves_with_path(got)
  want_leaves = jax.tree_util.tree_leaves_with_path(want)
  assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
  for (path, g), (_, w) in zip(got_leaves, want_leaves):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


# --- NumPy references -------------------------------------------------------------------

def numpy_nt_xent(z, tau):
  """Paper's L and dL/dz for z [2N, d] (rows: view a of pairs 0..N-1, then view b)."""
  z = z.astype(np.float64)
  two_n = z.shape[0]
  norm = np.linalg.norm(z, axis=1, keepdims=True)
  u = z / norm
  s = u @ u.T / tau
  np.fill_diagonal(s, -np.inf)
  p = np.exp(s - s.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  rows, pos = np.arange(two_n), (np.arange(two_n) + two_n // 2) % two_n
  loss = -np.mean(np.log(p[rows, pos]))
  acc = np.mean(np.argmax(s, axis=1) == pos)
  d_s = p.copy()  # dL/ds: softmax minus the positive's one-hot, over 2N anchors
  d_s[rows, pos] -= 1.0
  d_s /= two_n
  d_u = (d_s + d_s.T) @ u / tau
  d_z = (d_u - u * np.sum(u * d_u, axis=1, keepdims=True)) / norm
  return loss, acc, d_z


def numpy_cross_entropy(logits, labels):
  """Mean softmax cross-entropy and its gradient w.r.t. logits [B, K]."""
  logits = logits.astype(np.float64)
  p = np.exp(logits - logits.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  rows = np.arange(len(labels))
  d = p.copy()
  d[rows, labels] -= 1.0
  return -np.mean(np.log(p[rows, labels])), d / len(labels)


def chunk_rows(num_pairs, chunks):
  """Row indices (into [2n]) of each chunk: pairs c, c + C, ..., view a then view b."""
  return [np.concatenate([np.arange(c, num_pairs, chunks),
                          num_pairs + np.arange(c, num_pairs, chunks)])
          for c in range(chunks)]


# --- layout -------------------------------------------------------------------------------

@pytest.mark.parametrize("chunks", [1, 2, 4, 8])
def test_chunks_hold_both_views_of_strided_pairs(chunks):
  x = np.arange(2 * PAIRS * 3).reshape(2 * PAIRS, 3)
  chunked = np.asarray(grad_cache.to_chunks(jnp.asarray(x), chunks))
  assert chunked.shape == (chunks, 2 * PAIRS // chunks, 3)
  for c, rows in enumerate(chunk_rows(PAIRS, chunks)):
    np.testing.assert_array_equal(chunked[c], x[rows])
  np.testing.assert_array_equal(np.asarray(grad_cache.from_chunks(jnp.asarray(chunked))), x)


@pytest.mark.parametrize("rows,chunks,message", [
    (16, 3, "must divide the per-device number of pairs \\(8\\)"),
    (16, 0, "must be an int >= 1, got 0"),
    (15, 1, "expected 2n rows"),
])
def test_bad_chunking_is_rejected(rows, chunks, message):
  with pytest.raises(ValueError, match=message):
    grad_cache.to_chunks(jnp.zeros((rows, 2)), chunks)


# --- loss and embedding gradients -----------------------------------------------------------

@pytest.mark.parametrize("chunks", [1, 2, 4])
def test_loss_and_embedding_gradients_equal_unchunked(chunks):
  """Given the same embeddings, the step's head loss on the chunked heads and d loss /
  d (z, logits, the probe's kernel) are those of the whole batch (NumPy reference,
  computed in the original, unchunked row order)."""
  rng = np.random.default_rng(chunks)
  z = rng.normal(size=(2 * PAIRS, 16)).astype(np.float32)
  logits = rng.normal(size=(2 * PAIRS, CLASSES)).astype(np.float32)
  kernel = rng.normal(size=(24, CLASSES)).astype(np.float32)
  _, labels = batch()
  c = config(chunks)
  head_loss = ts.make_head_loss(c)

  def chunked_loss_and_grads(z, logits, kernel, labels):
    heads = {"z": grad_cache.to_chunks(z, chunks), "logits": grad_cache.to_chunks(logits,
                                                                                 chunks)}
    params = {"classifier": {"kernel": kernel}}
    (total, metrics), (direct, grads) = grad_cache.loss_and_grads(head_loss, params, heads,
                                                                  labels)
    return total, metrics, direct, jax.tree.map(grad_cache.from_chunks, grads)

  total, metrics, direct, grads = on_one_device(chunked_loss_and_grads)(z, logits, kernel,
                                                                        labels)
  want_loss, want_acc, want_dz = numpy_nt_xent(z, c.loss.temperature)
  want_ce, want_dlogits = numpy_cross_entropy(logits, labels)
  wd = c.optim.weight_decay
  want_l2 = 0.5 * wd * np.sum(kernel.astype(np.float64) ** 2)
  np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["contrast_acc"], want_acc)
  np.testing.assert_allclose(metrics["probe_loss"], want_ce, rtol=1e-5)
  np.testing.assert_allclose(total, want_loss + want_ce + want_l2, rtol=1e-5)
  np.testing.assert_allclose(grads["z"], want_dz, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(grads["logits"], want_dlogits, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(direct["classifier"]["kernel"], wd * kernel, rtol=1e-6)


# --- parameter gradients ------------------------------------------------------------------

def test_batch_independent_network_gets_the_unchunked_gradients():
  """No batch-dependent layer (LayerNorm): chunks = 4 gives the plain (chunks = 1)
  gradients, metrics and statistics (images seen) exactly."""
  model = ToySimCLR(norm="layer", axis_name=parallel.AXIS)
  params, stats = init(model)
  images, labels = batch()
  got = on_one_device(ts.make_grad_fn(model, config(chunks=4)))(params, stats, images,
                                                                 labels)
  want = on_one_device(ts.make_grad_fn(model, config(chunks=1)))(params, stats, images,
                                                                 labels)
  assert_trees_close(got, want)
  assert float(got[1][0]["images_seen"]) == 2 * PAIRS
  assert float(jnp.abs(got[0]["classifier"]["kernel"]).max()) > 0


def per_chunk_bn_loss_fn(model, c):
  """The unchunked loss of a network whose BN normalises each chunk separately: plain
  autodiff through C forward passes (one per chunk, BN running stats threaded through
  them in chunk order), embeddings put back in batch order, the whole-batch loss."""
  chunks, tau, wd = c.loss.chunks, c.loss.temperature, c.optim.weight_decay
  rows = chunk_rows(PAIRS, chunks)
  inverse = np.argsort(np.concatenate(rows))

  def loss_fn(params, stats, images, labels):
    outs = []
    for r in rows:
      out, mutated = model.apply({"params": params, "batch_stats": stats}, images[r],
                                 train=True, mutable=["batch_stats"])
      stats = mutated["batch_stats"]
      outs.append(out)
    z = jnp.concatenate([o["z"] for o in outs])[inverse]
    logits = jnp.concatenate([o["logits"] for o in outs])[inverse]
    loss, aux = losses.nt_xent(z[:PAIRS], z[PAIRS:], temperature=tau, axis_name=parallel.AXIS)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    l2 = 0.5 * wd * jnp.sum(params["classifier"]["kernel"] ** 2)
    metrics = {"loss": loss, **aux, "probe_loss": ce,
               "probe_acc": jnp.mean(jnp.argmax(logits, -1) == labels)}
    return loss + ce + l2, (stats, metrics)

  return jax.grad(loss_fn, has_aux=True)


def test_resnet_gets_the_gradients_of_per_chunk_batchnorm():
  """A real ResNet-18 (BN everywhere): chunks = 2 equals autodiff of the network whose BN
  statistics are per chunk: gradients, BN running statistics (updated chunk by chunk)
  and metrics."""
  c = config(chunks=2)
  model = models.create_model(c.model, num_classes=CLASSES, axis_name=parallel.AXIS)
  params, stats = init(model)
  images, labels = batch()
  got = on_one_device(ts.make_grad_fn(model, c))(params, stats, images, labels)
  want = on_one_device(per_chunk_bn_loss_fn(model, c))(params, stats, images, labels)
  assert_trees_close(got, want, rtol=2e-4, atol=2e-6)
  # Not vacuous: the gradients reach the encoder, and the running means moved.
  encoder_grads = jax.tree.leaves(got[0]["encoder"])
  assert max(float(jnp.abs(g).max()) for g in encoder_grads) > 1e-6
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), got[1][0], stats)
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_batchnorm_makes_chunking_visible():
  """With BN the chunked step is NOT the whole-batch step (what the README says):
  the running statistics get C updates (momentum 0.9 twice) from per-chunk moments."""
  model = ToySimCLR(norm="batch", axis_name=parallel.AXIS)
  params, stats = init(model)
  images, labels = batch()
  _, (got_stats, _) = on_one_device(ts.make_grad_fn(model, config(chunks=2)))(
      params, stats, images, labels)
  _, (full_stats, _) = on_one_device(ts.make_grad_fn(model, config(chunks=1)))(
      params, stats, images, labels)
  # The first BN sees h = x W + b; its per-chunk means, by NumPy.
  x = images.reshape(2 * PAIRS, -1).astype(np.float64)
  dense = params["Dense_0"]
  h = x @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"], np.float64)
  means = [h[r].mean(axis=0) for r in chunk_rows(PAIRS, 2)]
  start = np.asarray(stats["BatchNorm_0"]["mean"], np.float64)
  want = 0.9 * (0.9 * start + 0.1 * means[0]) + 0.1 * means[1]
  np.testing.assert_allclose(got_stats["BatchNorm_0"]["mean"], want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(full_stats["BatchNorm_0"]["mean"], 0.9 * start + 0.1 * h.mean(0),
                             rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(got_stats["BatchNorm_0"]["mean"]) -
                np.asarray(full_stats["BatchNorm_0"]["mean"])).max() > 1e-3


# --- multi-device -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def device_results(tmp_path_factory):
  out = tmp_path_factory.mktemp("grad_cache") / "results.npz"
  run_worker("grad_cache_devices.py", str(out), devices=8)
  return dict(np.load(out))


def _group(results, key):
  return {k.split("/", 1)[1]: v for k, v in results.items() if k.split("/", 1)[0] == key}


@pytest.mark.parametrize("devices", [4, 8])
def test_chunked_step_on_k_devices_equals_one_device(device_results, devices):
  """2 train steps with global BN, global batch 16 pairs, chunks = 2 per device: the
  same losses, parameters and BN statistics as the chunked step on 1 device (global
  chunk c = the global pairs g = c mod 2, whatever the device count)."""
  ref = _group(device_results, "toy_chunked_1")
  got = _group(device_results, f"toy_chunked_{devices}")
  assert set(got) == set(ref) and len(ref) > 5
  for name in ref:
    np.testing.assert_allclose(got[name], ref[name], rtol=2e-4, atol=2e-6, err_msg=name)


def test_multi_device_comparison_is_not_vacuous(device_results):
  """The unchunked step (whole-batch BN) ends elsewhere, so the equality above is about
  chunking, not about a step that changes nothing."""
  chunked = _group(device_results, "toy_chunked_1")
  unchunked = _group(device_results, "toy_unchunked_1")
  stats = [k for k in chunked if k.startswith("['stats']") and "mean" in k]
  assert stats
  assert max(np.abs(chunked[k] - unchunked[k]).max() for k in stats) > 1e-4
  assert np.abs(chunked["metrics"][:, 0] - unchunked["metrics"][:, 0]).max() > 1e-6
