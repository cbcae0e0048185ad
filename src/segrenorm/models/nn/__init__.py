"""Networks, layered: layers -> blocks -> nets.

Layers: ``init`` (weight initialization), ``renorm`` (segmentation-renormalized instance
norm), ``upsample``. Blocks: ``blocks`` (plain and renormalized residual blocks). Nets:
``segnet`` (segmentation U-Net), ``extractor`` (semantic extractor), ``generator`` and
``discriminator`` (the CycleGAN generator and PatchGAN discriminator).
"""
