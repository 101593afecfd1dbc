"""Weighted k-nearest-neighbour classification on L2-normalised features h.

The instance-discrimination protocol (Wu et al., CVPR 2018), the usual SimCLR monitor:
the memory bank holds the normalised train features, a query's k most cosine-similar
bank entries vote for their labels with weight exp(s / T) (k = 200, T = 0.1), and the
class with the largest vote wins.

Distances are computed on the accelerators: the bank is split along the data-parallel
mesh axis, every device ranks the queries against its shard, keeps its k best
candidates, and the devices' candidates are gathered and ranked again. The result does
not depend on the device count (up to ties), and no device holds the whole bank.
"""

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from simclr_jax import data
from simclr_jax import parallel
from simclr_jax.parallel import AXIS, REPLICATED, SPLIT


def l2_normalize(x: jax.Array | np.ndarray, eps: float = 1e-12):
  """Rows of `x` [N, C] scaled to unit L2 norm (zero rows stay zero)."""
  xp = jnp if isinstance(x, jax.Array) else np
  norm = xp.sqrt(xp.sum(xp.square(x), axis=-1, keepdims=True))
  return x / xp.maximum(norm, eps)


def vote(sims: jax.Array, labels: jax.Array, *, num_classes: int,
         temperature: float) -> jax.Array:
  """Class scores [Q, num_classes] from neighbours' similarities and labels [Q, k].

  Each neighbour adds exp((s - 1) / T) to its class: exp(s / T) up to a factor common
  to all classes (cosine similarity s <= 1), which cannot overflow for small T.
  Neighbours with s = -inf (padding) add 0.
  """
  weights = jnp.exp((sims - 1.0) / temperature)
  return jnp.einsum("qk,qkc->qc", weights, jax.nn.one_hot(labels, num_classes,
                                                          dtype=weights.dtype))


def make_knn_scorer(mesh: jax.sharding.Mesh, *, num_classes: int, k: int,
                    temperature: float) -> Callable:
  """Returns `scores(bank, bank_labels, bank_valid, queries) -> [Q, num_classes]`.

  bank [N, C] (unit rows), bank_labels [N] int32 and bank_valid [N] bool are global
  arrays split along AXIS (N divisible by the device count; invalid rows are
  padding); queries [Q, C] (unit rows) are replicated. The scores come back
  replicated.
  """
  if k < 1:
    raise ValueError(f"knn k = {k!r} is not allowed: expected an integer >= 1")
  if not temperature > 0:
    raise ValueError(f"knn temperature = {temperature!r} is not allowed: expected > 0")

  def local(bank, bank_labels, bank_valid, queries):
    sims = jnp.einsum("qc,nc->qn", queries, bank, precision=jax.lax.Precision.HIGHEST)
    sims = jnp.where(bank_valid[None, :], sims, -jnp.inf)
    local_k = min(k, sims.shape[1])
    top_sims, idx = jax.lax.top_k(sims, local_k)
    top_labels = bank_labels[idx]
    # Every device's k best candidates; the global k best are among them.
    cand_sims = jax.lax.all_gather(top_sims, AXIS, axis=1, tiled=True)
    cand_labels = jax.lax.all_gather(top_labels, AXIS, axis=1, tiled=True)
    best_sims, best = jax.lax.top_k(cand_sims, min(k, cand_sims.shape[1]))
    best_labels = jnp.take_along_axis(cand_labels, best, axis=1)
    return vote(best_sims, best_labels, num_classes=num_classes, temperature=temperature)

  return parallel.data_parallel(local, mesh, in_specs=(SPLIT, SPLIT, SPLIT, REPLICATED),
                                out_specs=REPLICATED)


def topk_correct(scores: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[int, np.ndarray]:
  """{k: [Q] bool, label among the k best-scored classes} (k capped at the class count)."""
  order = np.argsort(-scores, axis=1, kind="stable")
  return {k: (order[:, :min(k, scores.shape[1])] == labels[:, None]).any(axis=1) for k in ks}


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray,
                 test_features: np.ndarray, test_labels: np.ndarray, *, num_classes: int,
                 mesh: jax.sharding.Mesh, k: int = 200, temperature: float = 0.1,
                 query_batch: int = 256) -> dict[str, float]:
  """Top-1 / top-5 accuracy of weighted kNN; features are raw h (normalised here).

  Args:
    train_features: [N, C] memory bank features (host arrays, all processes equal).
    train_labels: [N] ints in [0, num_classes).
    test_features, test_labels: [Q, C], [Q] queries.
    num_classes: number of classes.
    mesh: 1-D data-parallel mesh the bank is split over.
    k, temperature: neighbours that vote and the vote temperature T.
    query_batch: queries scored per call (memory: query_batch x N / devices floats).
  """
  if len(train_features) == 0 or len(test_features) == 0:
    raise ValueError("kNN needs a non-empty memory bank and query set, got "
                     f"{len(train_features)} bank and {len(test_features)} query features")
  if query_batch < 1:
    raise ValueError(f"knn query_batch = {query_batch!r} is not allowed: expected >= 1")
  devices = mesh.devices.size
  n = len(train_features)
  padded = -(-n // devices) * devices
  pad = lambda x: np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
  split = NamedSharding(mesh, SPLIT)
  bank = jax.device_put(pad(l2_normalize(np.asarray(train_features, np.float32))), split)
  bank_labels = jax.device_put(pad(np.asarray(train_labels, np.int32)), split)
  bank_valid = jax.device_put(pad(np.ones(n, bool)), split)
  scorer = make_knn_scorer(mesh, num_classes=num_classes, k=k, temperature=temperature)
  replicated = NamedSharding(mesh, REPLICATED)
  queries = l2_normalize(np.asarray(test_features, np.float32))
  hits = {1: 0, 5: 0}
  for start in range(0, len(queries), query_batch):
    chunk = queries[start:start + query_batch]
    # A fixed query shape compiles once; the tail is padded and its rows dropped.
    chunk = np.concatenate([chunk, np.zeros((query_batch - len(chunk), chunk.shape[1]),
                                            np.float32)])
    scores = np.asarray(jax.device_get(
        scorer(bank, bank_labels, bank_valid, jax.device_put(chunk, replicated))))
    real = min(query_batch, len(queries) - start)
    correct = topk_correct(scores[:real], np.asarray(test_labels[start:start + real]))
    hits = {kk: hits[kk] + int(correct[kk].sum()) for kk in hits}
  return {"top1": hits[1] / len(queries), "top5": hits[5] / len(queries)}


def make_encode_fn(model, mesh: jax.sharding.Mesh) -> Callable:
  """`(variables, images [B, S, S, 3] split along AXIS) -> h [B, C]`, inference mode."""
  inference = model.clone(axis_name=None)

  def encode(variables, images):
    return inference.apply(variables, images, train=False, method="encode")

  return parallel.data_parallel(encode, mesh, in_specs=(REPLICATED, SPLIT), out_specs=SPLIT)


def _to_host(tree):
  """Global arrays -> full numpy arrays on every process."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, jax.device_get(tree))


def extract_features(encode: Callable, variables: Any, batches: Iterable[dict],
                     mesh: jax.sharding.Mesh) -> tuple[np.ndarray, np.ndarray]:
  """h and labels of every real (mask True) example of `batches`, on the host.

  Args:
    encode: from `make_encode_fn`, or any `(variables, images) -> [B, C]` on global arrays.
    variables: replicated model variables.
    batches: this process's share of {"image", "label", "mask"} eval batches.
    mesh: the data-parallel mesh.

  Returns:
    ([N, C] float32, [N] int32), all processes' examples, in batch order.
  """
  feats, labels = [], []
  for local_batch in batches:
    batch = parallel.shard_batch(local_batch, mesh)
    out = _to_host({"h": encode(variables, batch["image"]), "label": batch["label"],
                    "mask": batch["mask"]})
    mask = np.asarray(out["mask"], bool)
    feats.append(np.asarray(out["h"], np.float32)[mask])
    labels.append(np.asarray(out["label"], np.int32)[mask])
  if not feats:
    raise ValueError("no batches to extract features from")
  return np.concatenate(feats), np.concatenate(labels)


def split_batches(config: ml_collections.ConfigDict, data_dir: str | None,
                  split: str) -> Iterable[dict]:
  """Every example of `split` once, centre-crop preprocessing, masked padding."""
  return data.create_eval_dataset(config, data_dir=data_dir,
                                            split=split).as_numpy_iterator()


def evaluate_knn(model, variables: Any, config: ml_collections.ConfigDict, *,
                 data_dir: str | None, mesh: jax.sharding.Mesh,
                 num_classes: int) -> dict[str, float]:
  """kNN top-1/top-5 of `model`'s h: bank = config.train_split, queries = eval_split.

  `variables` ({"params", "batch_stats"}, the encoder's BN running averages are used)
  may be host arrays or replicated global arrays. config.knn holds k, temperature and
  query_batch.
  """
  variables = parallel.replicate(variables, mesh)
  encode = make_encode_fn(model, mesh)
  train = extract_features(encode, variables,
                           split_batches(config, data_dir, config.train_split), mesh)
  test = extract_features(encode, variables,
                          split_batches(config, data_dir, config.eval_split), mesh)
  acc = knn_accuracy(*train, *test, num_classes=num_classes, mesh=mesh, k=config.knn.k,
                     temperature=config.knn.temperature,
                     query_batch=config.knn.query_batch)
  return {"knn_top1": acc["top1"], "knn_top5": acc["top5"]}
