"""Networks: layers (init, renorm) -> blocks -> nets (seg U-Net, extractor, G, D)."""

from __future__ import annotations

from segrenorm.models.nn.blocks import RenormResBlock, ResBlock
from segrenorm.models.nn.discriminator import PatchDiscriminator, patch_receptive_field
from segrenorm.models.nn.extractor import SemanticExtractor
from segrenorm.models.nn.generator import Generator
from segrenorm.models.nn.init import init_weights, mark_zero_init
from segrenorm.models.nn.renorm import SegRenorm, modulated_instance_norm, set_film_enabled
from segrenorm.models.nn.segnet import SegUNet

__all__ = [
    "Generator",
    "PatchDiscriminator",
    "RenormResBlock",
    "ResBlock",
    "SegRenorm",
    "SegUNet",
    "SemanticExtractor",
    "init_weights",
    "mark_zero_init",
    "modulated_instance_norm",
    "patch_receptive_field",
    "set_film_enabled",
]
