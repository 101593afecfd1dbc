"""kNN class scores and accuracy with the bank split over 1, 2, 3 and 8 devices."""

import sys

from simclr_jax import platform
platform.configure_xla_flags()
import jax
import numpy as np

from simclr_jax import knn
from simclr_jax import parallel


def main(out_path):
  rng = np.random.default_rng(1)
  bank = rng.normal(size=(37, 6)).astype(np.float32)  # 37: not divisible by 2, 3 or 8
  bank_labels = rng.integers(0, 4, 37).astype(np.int32)
  queries = rng.normal(size=(11, 6)).astype(np.float32)
  query_labels = rng.integers(0, 4, 11).astype(np.int32)
  results = {}
  for devices in (1, 2, 3, 8):
    mesh = parallel.make_mesh(jax.devices()[:devices])
    for k in (3, 20, 200):  # 20 > 37/8 rows per device; 200 > the whole bank
      padded = -(-37 // devices) * devices
      pad = lambda x: np.concatenate([x, np.zeros((padded - 37, *x.shape[1:]), x.dtype)])
      scorer = knn.make_knn_scorer(mesh, num_classes=4, k=k, temperature=0.1)
      split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(parallel.AXIS))
      put = lambda x: jax.device_put(x, split)
      scores = scorer(put(pad(knn.l2_normalize(bank))), put(pad(bank_labels)),
                      put(pad(np.ones(37, bool))), knn.l2_normalize(queries))
      results[f"{devices}/{k}/scores"] = np.asarray(scores)
      acc = knn.knn_accuracy(bank, bank_labels, queries, query_labels, num_classes=4,
                             mesh=mesh, k=k, temperature=0.1, query_batch=4)
      results[f"{devices}/{k}/acc"] = np.array([acc["top1"], acc["top5"]])
  np.savez(out_path, bank=bank, bank_labels=bank_labels, queries=queries,
           query_labels=query_labels, **results)


if __name__ == "__main__":
  main(sys.argv[1])
