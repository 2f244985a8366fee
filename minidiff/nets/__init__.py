"""Networks: time/class embeddings, an MLP eps-model for 2-D data, a small U-Net for images, and
(chapter 4) classifiers on noisy inputs."""
from .classifier import NoisyClassifier2D, NoisyDigitClassifier
from .embeddings import ClassEmbedding, TimeEmbedding, check_timesteps, timestep_embedding
from .mlp import MLPDenoiser
from .unet import ResBlock, SelfAttention2d, UNet

__all__ = ["ClassEmbedding", "TimeEmbedding", "check_timesteps", "timestep_embedding",
           "MLPDenoiser", "UNet", "ResBlock", "SelfAttention2d", "NoisyClassifier2D", "NoisyDigitClassifier"]
