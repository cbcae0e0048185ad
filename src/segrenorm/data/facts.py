"""What inference needs to know about the training data, stored with every checkpoint.

A translator only sees ``[-1, 1]`` slices cut along one axis of a RAS+ volume at one voxel spacing.
To harmonize a whole volume, :mod:`segrenorm.harmonize.harmonizer` must cut it the same way, scale
it with the same percentiles and map the output back to the *target* site's intensities.
:func:`inference_facts` condenses a slice cache's manifest into those facts
(``runlog.describe_cache`` stores them under ``cache_info["inference"]``);
:meth:`TrainingFacts.from_checkpoint` reads them back, falling back to the training cache's
manifest for checkpoints written before the facts were stored.

Example:
    >>> facts = TrainingFacts.from_checkpoint(payload, "final.pt")  # doctest: +SKIP
    >>> facts.target_scaling("AB").high  # doctest: +SKIP
    1012.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segrenorm.data.grid import on_grid
from segrenorm.errors import CacheError, SegrenormError
from segrenorm.vocabulary import SITES, SLICE_AXES, check_modality, source_site, target_site
from segrenorm.volumes.bias import NO_BIAS_CORRECTION, BiasCorrection
from segrenorm.volumes.intensity import IntensityScaling, check_headroom

__all__ = ["INFERENCE_KEY", "TrainingFacts", "inference_facts"]

#: Key of the facts inside a checkpoint's ``cache_info``.
INFERENCE_KEY = "inference"


def _median_scaling(
    subjects: list[Mapping[str, Any]], percentiles: list[float], headroom: float
) -> dict[str, Any]:
    """Median low/high of the subjects' scalings: a typical volume of the site."""
    lows = [float(s["scaling"]["low"]) for s in subjects]
    highs = [float(s["scaling"]["high"]) for s in subjects]
    return {
        "low": float(np.median(lows)),
        "high": float(np.median(highs)),
        "lower_pct": float(percentiles[0]),
        "upper_pct": float(percentiles[1]),
        "headroom": float(headroom),
        "n_subjects": len(subjects),
    }


def _any_resampled(subjects: list[Mapping[str, Any]], grid: Sequence[float] | None) -> bool:
    """Whether ``prepare`` resampled any volume onto the cache's grid (``on_grid`` off).

    A cache without a grid resampled nothing; a subject without ``original_spacing`` (a cache
    from before it was recorded, where every volume was resampled to ``--spacing``) counts as
    resampled.
    """
    if grid is None:
        return False
    return any(
        "original_spacing" not in s or not on_grid(s["original_spacing"], grid) for s in subjects
    )


def inference_facts(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Condense a slice cache manifest into the plain facts harmonization needs.

    Each site's intensity scale is the median ``low``/``high`` over its training subjects
    (every subject when the cache has no training split); the training spacing is the
    cache's grid (``"spacing"``: every cache ``prepare`` writes now has one), or, for a cache
    from before the one grid (``"spacing": null``, volumes cut at their own voxel sizes), the
    per-axis median of its subjects' spacings.

    Args:
        manifest: a validated ``manifest.json`` (see ``docs/cache-format.md``).

    Returns:
        A JSON-serialisable dict: ``slice_axis``, ``orientation``, ``spacing``,
        ``resampled`` (whether any training volume was resampled onto the grid: off it by
        more than :data:`~segrenorm.data.grid.GRID_TOLERANCE`), ``percentiles``, ``headroom``
        (0 for a cache from before it existed),
        ``use_mask``, ``pad_multiple``, ``bias_correction`` (a
        :class:`~segrenorm.volumes.bias.BiasCorrection` dict; ``method`` ``"none"`` for a cache
        prepared before bias correction existed), ``modality`` (``"mri"`` for a cache from
        before OCT), ``site_names`` and ``scaling`` (per site key ``A``/``B``).

    Raises:
        ConfigError: the manifest's ``bias_correction`` or ``modality`` is invalid.
    """
    subjects = list(manifest["subjects"])
    percentiles = [float(p) for p in manifest.get("percentiles", [0.5, 99.5])]
    headroom = float(manifest.get("headroom", 0.0))
    scaling = {}
    for key in SITES:
        site = [s for s in subjects if s["site"] == key and "scaling" in s]
        trained = [s for s in site if s.get("split") == "train"] or site
        if trained:
            scaling[key] = _median_scaling(trained, percentiles, headroom)
    if manifest.get("spacing") is not None:
        spacing = [float(s) for s in manifest["spacing"]]
    else:
        spacings = np.array([s["spacing"] for s in subjects if "spacing" in s], dtype=np.float64)
        spacing = np.median(spacings, axis=0).tolist() if spacings.size else [1.0, 1.0, 1.0]
    return {
        "slice_axis": str(manifest["slice_axis"]),
        "orientation": str(manifest.get("canonical_orientation", "RAS")),
        "spacing": [float(s) for s in spacing],
        "resampled": _any_resampled(subjects, manifest.get("spacing")),
        "percentiles": percentiles,
        "headroom": headroom,
        "use_mask": bool(manifest.get("use_mask", True)),
        "pad_multiple": int(manifest.get("pad_multiple", 16)),
        "bias_correction": BiasCorrection.from_dict(manifest.get("bias_correction")).to_dict(),
        "modality": check_modality(str(manifest.get("modality", "mri"))),
        "site_names": {k: str(v) for k, v in dict(manifest["sites"]).items()},
        "scaling": scaling,
    }


@dataclass(frozen=True)
class TrainingFacts:
    """How the training slices were made, and each site's intensity scale.

    Args:
        slice_axis: plane the model was trained on (``axial``, ``coronal`` or ``sagittal``).
        spacing: canonical (RAS) voxel size in mm of the training volumes: the model's grid,
            which harmonize puts its inputs on.
        percentiles: foreground percentiles mapped to -1 and 1.
        use_mask: whether scaling used a foreground mask (background -1).
        headroom: the scaling's headroom above the upper percentile (0 for checkpoints from
            before it existed).
        pad_multiple: the cache's padding multiple.
        site_names: human names of sites ``A`` and ``B`` of the training cache or, for a
            cache of more than two sites, of the pair trained on (``data.source``,
            ``data.target``).
        scaling: a typical :class:`IntensityScaling` per cache site key.
        train_direction: the run's ``data.direction``: which cache site was the model's
            source domain (``"AB"``: site A; ``"BA"``: site B).
        bias_correction: how volumes were bias-corrected before scaling; harmonization
            applies the same (``method="none"`` for checkpoints from before it existed).
        modality: ``"mri"`` or ``"oct"``: the recipe's modality (retina mask, nearest-neighbour
            resampling, background kept); ``"mri"`` for checkpoints from before OCT.
    """

    slice_axis: str
    spacing: tuple[float, float, float]
    percentiles: tuple[float, float]
    use_mask: bool
    pad_multiple: int
    site_names: Mapping[str, str]
    scaling: Mapping[str, IntensityScaling]
    train_direction: str = "AB"
    bias_correction: BiasCorrection = NO_BIAS_CORRECTION
    modality: str = "mri"
    headroom: float = 0.0

    def target_site(self, direction: str) -> str:
        """Cache site key (``A``/``B``) that ``direction``'s generator translates into.

        Args:
            direction: ``"AB"`` (the model's G) or ``"BA"`` (its F).
        """
        source_key = source_site(self.train_direction)
        target_key = target_site(self.train_direction)
        return target_key if direction == "AB" else source_key

    def target_scaling(self, direction: str) -> IntensityScaling:
        """The target site's typical intensity scale, for mapping outputs back.

        Args:
            direction: ``"AB"`` or ``"BA"``.

        Raises:
            CacheError: the training data held no subject of the target site.
        """
        key = self.target_site(direction)
        if key not in self.scaling:
            raise CacheError(
                f"the training cache recorded no intensity scale for site {key} "
                f"({self.site_names.get(key, key)}); re-run segrenorm prepare and train."
            )
        return self.scaling[key]

    def target_name(self, direction: str) -> str:
        """Human name of the target site of ``direction``.

        Args:
            direction: ``"AB"`` or ``"BA"``.
        """
        key = self.target_site(direction)
        return str(self.site_names.get(key, key))

    def source_name(self, direction: str) -> str:
        """Human name of the site ``direction``'s generator translates from.

        Args:
            direction: ``"AB"`` or ``"BA"``.
        """
        return self.target_name("BA" if direction == "AB" else "AB")

    def site_notes(self, site: str | None, direction: str, *, model: str | Path) -> list[str]:
        """Warnings for harmonizing a volume of ``site`` with this model in ``direction``.

        The one check ``Harmonizer.harmonize(..., site=...)`` and ``segrenorm harmonize
        --csv`` share: a site the model never saw is translated anyway, with a warning.

        Args:
            site: the volume's site name, or None when unknown (no warning).
            direction: ``"AB"`` or ``"BA"``.
            model: the checkpoint, named in the warning.

        Returns:
            No note for the direction's source site; one note otherwise.
        """
        source, target = self.source_name(direction), self.target_name(direction)
        if site is None or site == source:
            return []
        if site == target:
            return [
                f"site {site!r} is already the target site of {model} ({source} -> "
                f"{target}); translated anyway"
            ]
        return [
            f"{model} never saw site {site!r}; trained on {source} -> {target}; results may be off"
        ]

    @classmethod
    def from_dict(cls, facts: Mapping[str, Any], train_direction: str = "AB") -> TrainingFacts:
        """Rebuild from :func:`inference_facts` output.

        Args:
            facts: the stored dict.
            train_direction: the run's ``data.direction``.

        Raises:
            CacheError: a key is missing or a value is malformed.
        """
        try:
            axis = str(facts["slice_axis"])
            if axis not in SLICE_AXES:
                raise ValueError(f"unknown slice axis {axis!r}")
            sx, sy, sz = (float(v) for v in facts["spacing"])
            low_pct, high_pct = (float(v) for v in facts["percentiles"])
            scaling = {
                key: IntensityScaling.from_dict(value)
                for key, value in dict(facts["scaling"]).items()
            }
            return cls(
                slice_axis=axis,
                spacing=(sx, sy, sz),
                percentiles=(low_pct, high_pct),
                use_mask=bool(facts["use_mask"]),
                pad_multiple=int(facts["pad_multiple"]),
                site_names={str(k): str(v) for k, v in dict(facts["site_names"]).items()},
                scaling=scaling,
                train_direction=train_direction,
                bias_correction=BiasCorrection.from_dict(facts.get("bias_correction")),
                modality=check_modality(str(facts.get("modality", "mri"))),
                headroom=check_headroom(float(facts.get("headroom", 0.0))),
            )
        except (KeyError, TypeError, ValueError, SegrenormError) as exc:
            raise CacheError(f"malformed inference facts ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_checkpoint(cls, payload: Mapping[str, Any], source: str | Path) -> TrainingFacts:
        """Read the facts of a checkpoint; older checkpoints fall back to the cache manifest.

        Args:
            payload: a dict from :func:`segrenorm.models.checkpoint.load_checkpoint`.
            source: the checkpoint file, for messages.

        Raises:
            CheckpointError: the checkpoint lacks the facts and its training cache is gone.
        """
        from segrenorm.data.manifest import open_manifest
        from segrenorm.errors import CheckpointError

        cache_info = dict(payload.get("cache_info") or {})
        direction = str(dict(payload.get("config") or {}).get("data", {}).get("direction", "AB"))
        stored = cache_info.get(INFERENCE_KEY)
        try:
            if stored is None:
                cache = cache_info.get("path")
                if not cache:
                    raise CacheError("the checkpoint names no training cache")
                stored = inference_facts(open_manifest(cache))
            return cls.from_dict(stored, direction)
        except CacheError as exc:
            raise CheckpointError(
                f"{source}: it does not record how its training slices were made (slice axis, "
                f"spacing, site intensities) and its training cache cannot be read ({exc}). "
                "Keep the cache at its original path, or retrain with this segrenorm version."
            ) from None
