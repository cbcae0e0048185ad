"""segrenorm: unpaired multi-scanner harmonization with segmentation-renormalized generators."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
