"""What a small dataset leaves out of pretraining's evaluations, decided at the start.

Pretraining evaluates with an online probe (top-1/top-5 on the eval split), an
optional kNN monitor and linear probes on all labels and on `shots` labels per class
(the entries of `config.evals`). On a small custom dataset some of these cannot run:
they are skipped, and each skip is logged once when the run starts.
"""

import dataclasses

import numpy as np
from absl import logging

from simclr_jax import evaluators

TOP5 = 5


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which evaluations a dataset allows."""
  eval_split: bool = True  # online probe and kNN monitor (need eval images)
  top5: bool = True  # top-5 accuracies (need more than 5 classes to mean anything)
  probes: bool = True  # final linear probes (need 2 classes in train, eval images)
  few_shot: bool = True  # final few-shot probe (need `shots` train images per class)
  notes: tuple[str, ...] = ()  # what is skipped, and why


def plan(config, source) -> Plan:
  """The evaluations `config`'s pretraining can run on `source` (a data
  Source)."""
  name = source.name
  probes = [(n, e) for n, e in evaluators.enabled(config.evals) if e.type == "linear_probes"]
  num_eval = source.num_examples(config.eval_split)
  counts = source.class_counts(config.train_split)
  present = int(np.count_nonzero(counts)) if counts is not None else source.num_classes
  notes, fields = [], {}
  if num_eval == 0:
    fields.update(eval_split=False, probes=False, few_shot=False)
    notes.append(f"split {config.eval_split!r} of {name!r} has no images: the online "
                 "probe, kNN monitor and final probes are skipped")
  if source.num_classes <= TOP5:
    fields["top5"] = False
    notes.append(f"{name!r} has {source.num_classes} classes: top-5 accuracy is not "
                 "reported")
  if probes and fields.get("probes", True):
    field, shots = f"evals.{probes[0][0]}.shots", probes[0][1].shots
    if present < 2:
      fields.update(probes=False, few_shot=False)
      notes.append(f"split {config.train_split!r} of {name!r} has images of {present} "
                   "class(es): the final linear probes (at least 2) are skipped")
    elif counts is not None and np.any((counts > 0) & (counts < shots)):
      small = [(c, int(n)) for c, n in enumerate(counts) if 0 < n < shots]
      names = getattr(source, "classes", None)
      listed = ", ".join(f"{names[c] if names else c}: {n}" for c, n in small[:5])
      fields["few_shot"] = False
      notes.append(f"{len(small)} class(es) of split {config.train_split!r} have fewer "
                   f"than {field} = {shots} images ({listed}"
                   f"{', ...' if len(small) > 5 else ''}): the final {shots}-shot probe is "
                   "skipped")
  return Plan(**fields, notes=tuple(notes))


def report(plan_: Plan) -> None:
  """One warning per skipped evaluation."""
  for note in plan_.notes:
    logging.warning("Small dataset: %s", note)
