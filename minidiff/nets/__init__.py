"""Networks: time/class embeddings, MLP eps-models for 2-D data (plain, and U-shaped with ports), the U-Net
(images or 1-D signals, optional cross-attention), attention blocks, hookable ports, and (chapter 4)
classifiers on noisy inputs."""
from .attention import Attention, SelfAttention, SpatialTransformer, TransformerBlock
from .classifier import NoisyClassifier2D, NoisyDigitClassifier
from .embeddings import ClassEmbedding, TimeEmbedding, check_timesteps, timestep_embedding
from .mlp import MLPDenoiser, UMLPDenoiser
from .ports import Port, add_residuals, capture, find_ports
from .unet import ResBlock, SelfAttention2d, UNet

__all__ = ["ClassEmbedding", "TimeEmbedding", "check_timesteps", "timestep_embedding",
           "MLPDenoiser", "UMLPDenoiser", "UNet", "ResBlock", "SelfAttention2d", "NoisyClassifier2D",
           "NoisyDigitClassifier", "Attention", "SelfAttention", "TransformerBlock", "SpatialTransformer",
           "Port", "add_residuals", "capture", "find_ports"]
