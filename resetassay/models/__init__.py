"""The models the project trains and every stage below the trainer shares (SPEC S1, S6, S7): the zoo (`zoo.py`:
MLP, small CNN, small ResNet, small causal transformer, registered by name, each declaring its unit layers) and
CBP's reset operator (`reset.py`: where a reset writes and the reset itself). This package sits below io/
(whose checkpoint loader builds zoo models), lesion/ (whose `cbp-reset` intervention applies the reset) and
train/ (which trains and resets them), so that none of those imports another to reach a model. Checkpoint
manifests name a factory of this package, `resetassay.models:mlp` (`:cnn`, `:resnet`, `:transformer`): these
names are a file format and keep resolving here.
"""

from resetassay.models.reset import ResetSite, reset_site, reset_weights
from resetassay.models.zoo import (
    ACTIVATIONS,
    CNN,
    DEFAULT_INIT,
    INITS,
    MLP,
    MODELS,
    RESNET_WIDTHS,
    ResNet,
    Transformer,
    cnn,
    create_model,
    init_weights_,
    kaiming_init_,
    mlp,
    model_family,
    register_model,
    resnet,
    transformer,
)

__all__ = [
    "ACTIVATIONS", "CNN", "DEFAULT_INIT", "INITS", "MLP", "MODELS", "RESNET_WIDTHS", "ResNet", "ResetSite",
    "Transformer", "cnn", "create_model", "init_weights_", "kaiming_init_", "mlp", "model_family",
    "register_model", "reset_site", "reset_weights", "resnet", "transformer",
]
