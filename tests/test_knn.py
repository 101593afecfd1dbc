"""Weighted kNN (knn.py) against a plain NumPy implementation of the protocol."""

import numpy as np
import pytest

import jax

from simclr_jax import knn
from simclr_jax import parallel
from tests.subproc import run_worker


def reference_scores(bank, bank_labels, queries, *, num_classes, k, temperature):
  """Cosine similarity to every bank row, the k largest vote exp(s / T) for their label."""
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  scores = np.zeros((len(queries), num_classes))
  for i, q in enumerate(queries):
    q = q / np.linalg.norm(q)
    sims = bank @ q
    for j in np.argsort(-sims)[:k]:
      scores[i, bank_labels[j]] += np.exp(sims[j] / temperature)
  return scores


def reference_accuracy(scores, labels):
  ranked = np.argsort(-scores, axis=1, kind="stable")
  return (ranked[:, 0] == labels).mean(), (ranked[:, :5] == labels[:, None]).any(1).mean()


def clustered(rng, sizes, num_classes, dim=8, noise=0.8):
  """One (features [n, dim], labels [n]) set per size, from shared class centres."""
  centres = rng.normal(size=(num_classes, dim))
  sets = []
  for n in sizes:
    labels = rng.integers(0, num_classes, n)
    sets.append(((centres[labels] + noise * rng.normal(size=(n, dim))).astype(np.float32),
                 labels))
  return sets


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh()


@pytest.mark.parametrize("k,temperature", [(1, 0.1), (7, 0.1), (50, 0.5), (500, 0.07)])
def test_scores_match_numpy(mesh, k, temperature):
  rng = np.random.default_rng(k)
  (bank, bank_labels), (queries, _) = clustered(rng, (120, 9), 6)
  scorer = knn.make_knn_scorer(mesh, num_classes=6, k=k, temperature=temperature)
  got = np.asarray(scorer(knn.l2_normalize(bank), bank_labels.astype(np.int32),
                          np.ones(120, bool), knn.l2_normalize(queries)))
  want = reference_scores(bank, bank_labels, queries, num_classes=6, k=k,
                          temperature=temperature)
  # The scorer drops the factor exp(-1/T) common to every class.
  np.testing.assert_allclose(got, want * np.exp(-1 / temperature), rtol=2e-5, atol=1e-30)
  assert (got.sum(axis=1) > 0).all()


def test_accuracy_matches_numpy_and_beats_chance(mesh):
  rng = np.random.default_rng(0)
  (bank, bank_labels), (queries, query_labels) = clustered(rng, (400, 150), 10)
  got = knn.knn_accuracy(bank, bank_labels, queries, query_labels, num_classes=10,
                         mesh=mesh, k=200, temperature=0.1, query_batch=64)
  scores = reference_scores(bank, bank_labels, queries, num_classes=10, k=200,
                            temperature=0.1)
  top1, top5 = reference_accuracy(scores, query_labels)
  assert got["top1"] == pytest.approx(top1, abs=1e-12)
  assert got["top5"] == pytest.approx(top5, abs=1e-12)
  assert got["top1"] > 0.5  # well-separated clusters: far above the 10% chance


def test_invariant_to_feature_scale_and_bank_order(mesh):
  rng = np.random.default_rng(3)
  (bank, bank_labels), (queries, query_labels) = clustered(rng, (200, 80), 5, noise=2.0)
  kw = dict(num_classes=5, mesh=mesh, k=30, temperature=0.1, query_batch=32)
  base = knn.knn_accuracy(bank, bank_labels, queries, query_labels, **kw)
  perm = rng.permutation(200)
  scale = rng.uniform(0.1, 10, size=(200, 1)).astype(np.float32)
  moved = knn.knn_accuracy(bank[perm] * scale[perm], bank_labels[perm], 3.0 * queries,
                           query_labels, **kw)
  assert base == moved
  assert 0.2 < base["top1"] < 1.0  # noisy enough that order/scale bugs would show


def test_query_batch_does_not_change_the_result(mesh):
  rng = np.random.default_rng(4)
  (bank, bank_labels), (queries, query_labels) = clustered(rng, (100, 45), 4, noise=1.5)
  kw = dict(num_classes=4, mesh=mesh, k=10, temperature=0.1)
  results = [knn.knn_accuracy(bank, bank_labels, queries, query_labels, query_batch=b, **kw)
             for b in (1, 7, 45, 100)]
  assert all(r == results[0] for r in results)


def test_small_temperature_does_not_overflow(mesh):
  rng = np.random.default_rng(5)
  [(bank, bank_labels)] = clustered(rng, (50,), 3)
  scorer = knn.make_knn_scorer(mesh, num_classes=3, k=10, temperature=0.005)
  scores = np.asarray(scorer(knn.l2_normalize(bank), bank_labels.astype(np.int32),
                             np.ones(50, bool), knn.l2_normalize(bank[:5])))
  assert np.isfinite(scores).all()
  # Each query is in the bank: its own label gets its own vote exp(0) = 1 (up to rounding).
  assert (scores[np.arange(5), bank_labels[:5]] >= 0.999).all()


def test_padding_rows_never_vote(mesh):
  rng = np.random.default_rng(6)
  [(bank, bank_labels)] = clustered(rng, (20,), 3)
  valid = np.ones(20, bool)
  valid[10:] = False
  scorer = knn.make_knn_scorer(mesh, num_classes=3, k=20, temperature=0.1)
  got = np.asarray(scorer(knn.l2_normalize(bank), bank_labels.astype(np.int32), valid,
                          knn.l2_normalize(bank[:4])))
  want = reference_scores(bank[:10], bank_labels[:10], bank[:4], num_classes=3, k=20,
                          temperature=0.1) * np.exp(-10)
  np.testing.assert_allclose(got, want, rtol=2e-5)


def test_l2_normalize():
  x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
  np.testing.assert_allclose(knn.l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
  np.testing.assert_allclose(knn.l2_normalize(jax.numpy.asarray(x)), [[0.6, 0.8], [0, 0]])


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=0), "k = 0"), (dict(temperature=0.0), "temperature = 0.0"),
    (dict(query_batch=0), "query_batch = 0")])
def test_bad_arguments_are_named(mesh, kwargs, match):
  args = dict(num_classes=2, mesh=mesh, k=5, temperature=0.1, query_batch=4)
  args.update(kwargs)
  x = np.ones((4, 3), np.float32)
  with pytest.raises(ValueError, match=match):
    knn.knn_accuracy(x, np.zeros(4, int), x, np.zeros(4, int), **args)


def test_empty_bank_is_an_error(mesh):
  with pytest.raises(ValueError, match="non-empty"):
    knn.knn_accuracy(np.zeros((0, 3), np.float32), np.zeros(0, int),
                     np.ones((2, 3), np.float32), np.zeros(2, int), num_classes=2, mesh=mesh)


def test_bank_split_over_devices_matches_numpy(tmp_path):
  """37 bank rows over 1, 2, 3 and 8 devices (padded shards, k above a shard's size and
  above the bank size) give the single-device NumPy scores and accuracies."""
  out = tmp_path / "knn.npz"
  run_worker("knn_devices.py", str(out), devices=8, timeout=300)
  r = dict(np.load(out))
  for k in (3, 20, 200):
    want = reference_scores(r["bank"], r["bank_labels"], r["queries"], num_classes=4, k=k,
                            temperature=0.1) * np.exp(-10)
    top1, top5 = reference_accuracy(want, r["query_labels"])
    for devices in (1, 2, 3, 8):
      np.testing.assert_allclose(r[f"{devices}/{k}/scores"], want, rtol=2e-5,
                                 err_msg=f"{devices} devices, k={k}")
      np.testing.assert_allclose(r[f"{devices}/{k}/acc"], [top1, top5], atol=1e-12)
