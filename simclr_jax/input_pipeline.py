"""The former path of `simclr_jax.data` (its public names), for modules not yet moved."""

from simclr_jax.data import (FOLDER_PREFIX, ArraySource, DatasetInfo, FolderSource,  # noqa: F401
                             Source, TfdsSource, create_eval_dataset, create_pretrain_dataset,
                             create_supervised_dataset, dataset_info, default_data_dir,
                             example_seeds, get_source, label_fraction_size, pretrain_batches)
