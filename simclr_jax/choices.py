"""The allowed values of the config's choice fields, importable without JAX or TensorFlow.

Each tuple belongs to the module named above it, which imports it from here: that
module implements exactly these values, and `config_lib` checks a config against the
same objects before JAX or TensorFlow are imported (a mistyped flag fails in about a
second).
"""

# simclr_jax.config_lib / main.py: config.mode, the job that runs.
MODES = ("pretrain", "linear_eval", "finetune", "knn", "export")

# simclr_jax.models.resnet: model.depth; finetune.fine_tune_after_block (ResNet's
# freeze_through: -1 = none, 0 = the stem, k = the stem and block groups 1..k).
DEPTHS = (18, 34, 50, 101, 152, 200)
FREEZE_THROUGH = (-1, 0, 1, 2, 3, 4)
# simclr_jax.models.simclr: model.dtype (compute dtype).
DTYPES = ("float32", "bfloat16")
# simclr_jax.models.heads: model.head_mode.
HEAD_MODES = ("none", "linear", "nonlinear")

# simclr_jax.optim: optim.name, optim.lr_scaling, optim.schedule (also the evaluation
# groups' optim).
OPTIMIZERS = ("lars", "sgd", "adamw")
LR_SCALINGS = ("linear", "sqrt", "none")
SCHEDULES = ("cosine", "constant")

# simclr_jax.augment.spec: augment.jitter_impl, augment.blur_on (blur in tf.data or in
# the train step, simclr_jax.train_step).
JITTER_IMPLS = ("simclrv1", "simclrv2")
BLUR_ON = ("data", "device")

# simclr_jax.data.streams: data.process_sharding.
PROCESS_SHARDINGS = ("split", "batch")
