"""SimCLR networks: ResNet encoder, projection head and the combined model."""

from simclr_jax.models.heads import ProjectionHead
from simclr_jax.models.resnet import ResNet, feature_dim, min_image_size
from simclr_jax.models.simclr import SimCLRModel, create_model

__all__ = [
    "ProjectionHead",
    "ResNet",
    "SimCLRModel",
    "create_model",
    "feature_dim",
    "min_image_size",
]
