"""Networks: time/class embeddings, MLP eps-models for 2-D data (plain and U-shaped with ports), a small U-Net for images, and
(chapter 4) classifiers on noisy inputs."""
from .classifier import NoisyClassifier2D, NoisyDigitClassifier
from .embeddings import ClassEmbedding, TimeEmbedding, check_timesteps, timestep_embedding
from .mlp import MLPDenoiser, UMLPDenoiser
from .unet import ResBlock, SelfAttention2d, UNet

__all__ = ["ClassEmbedding", "TimeEmbedding", "check_timesteps", "timestep_embedding",
           "MLPDenoiser", "UMLPDenoiser", "UNet", "ResBlock", "SelfAttention2d", "NoisyClassifier2D", "NoisyDigitClassifier"]
