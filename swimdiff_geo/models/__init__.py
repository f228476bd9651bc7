"""Training-side models: ResNet encoders, the SwiMDiff pretraining model and its denoiser.

Needs the ``train`` extra (torch). The encoder API is what the downstream heads build on::

    from swimdiff_geo.models import build_encoder, load_encoder_weights
"""

from swimdiff_geo.models.encoder import (
    ResNetEncoder,
    adapt_first_conv_weight,
    build_encoder,
    load_encoder_weights,
)

__all__ = ["ResNetEncoder", "adapt_first_conv_weight", "build_encoder", "load_encoder_weights"]
