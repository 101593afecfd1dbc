"""The tf.data input pipelines: SimCLR pretraining pairs, supervised training, evaluation.

Sources: any image-classification dataset of tensorflow-datasets by name (with its
config, e.g. "imagenet2012_subset/1pct"), the in-package offline "digits", and
"folder:/path" (a folder of class subfolders of images; see `FolderSource`).

Every stream is a sequence of epochs; epoch e of a process is its shard of the split,
shuffled (buffer `config.data.shuffle_buffer`) with a seed derived from (seed, e), and
example i of the epoch gets the augmentation seed fold_in(seed, process, e, i). A
resumed stream (`start_step`) starts at epoch and offset computed from the step and
skips the examples before it as raw records, before any decoding, and with
`config.data.deterministic` yields exactly the batches of an uninterrupted stream.

Images are decoded once per example (JPEGs only inside the union of the two views'
crop windows) and augmented in batches (`simclr_jax.augment`).
"""

from simclr_jax.data.pipelines import (create_eval_dataset, create_pretrain_dataset,
                                       create_supervised_dataset, label_fraction_size,
                                       pretrain_batches)
from simclr_jax.data.sources import (FOLDER_PREFIX, ArraySource, DatasetInfo, FolderSource,
                                     Source, TfdsSource, dataset_info, default_data_dir,
                                     get_source)
from simclr_jax.data.streams import example_seeds
