"""causaldiffae: Causal Diffusion Autoencoders for counterfactual image generation (Komanduri et al. 2024)."""

from .causal_layer import CausalLayer
from .counterfactual import Counterfactual, Spread, Sweep, counterfactual, sample, sweep
from .graph import CausalGraph, Variable
from .model import CausalDiffAE, Latents, ModelConfig

__version__ = "0.1.0"
__all__ = ["CausalDiffAE", "CausalGraph", "CausalLayer", "Counterfactual", "Latents", "ModelConfig", "Spread", "Sweep",
           "Variable", "__version__", "counterfactual", "sample", "sweep"]
