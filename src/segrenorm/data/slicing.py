"""The one recipe that cuts a volume the way the training slices were cut.

A translator only knows ``[-1, 1]`` slices made in a fixed way, so every stage that turns a
volume into such slices follows one :class:`SliceRecipe`:

1. reorient to RAS+ (:func:`~segrenorm.volumes.spatial.to_canonical`), so plane names mean the
   same anatomy for every input;
2. resample to the recipe's spacing, when it has one and the volume is not already on it
   (labels nearest-neighbour; :func:`~segrenorm.data.grid.on_grid`: within 0.1% per axis);
3. find the foreground (:func:`~segrenorm.volumes.intensity.foreground_mask`), unless the
   recipe scales whole volumes;
4. correct the bias field inside that foreground with the grid's voxel spacing
   (:class:`~segrenorm.volumes.bias.BiasCorrection`; ``method="none"`` skips it);
5. scale to ``[-1, 1]`` from the volume's own foreground percentiles, background -1;
6. cut along the slice axis and pad every slice to one shape, a multiple of ``pad_multiple``.

The recipe's ``modality`` changes four steps for retinal OCT (``"oct"``; ``"mri"`` is the
default and what caches and checkpoints without the field mean): step 1 keeps the stored voxel
order (an OCT volume's axes are A-scan, depth, B-scan, not anatomical directions; reorienting
an ``.mhd`` with the usual identity direction to RAS+ would flip depth and put the vitreous at
the bottom), step 2 resamples images with
nearest neighbour too (the paper's rule: voxels keep measured values and speckle statistics),
step 3's foreground is the retina (:func:`~segrenorm.volumes.retina.retina_mask`: not the
vitreous or the background), step 4 is refused (no N4 on OCT), and step 5 applies the scaling
fitted inside the retina to the *whole* volume, clipped to ``[-1, 1]``: the background keeps its
speckle instead of becoming -1, so background artefacts stay measurable. OCT volumes are cut
along B-scans (``axial``: the third axis of the ``(x, y, z)`` OCT convention).

``segrenorm.data.prepare`` builds a cache with it; ``segrenorm.evaluate.data`` cuts harmonized
volumes into the cache's rows with the recipe read back from the manifest
(:meth:`SliceRecipe.from_manifest`; without the bias correction, since harmonized volumes are
outputs); ``segrenorm.harmonize.harmonizer`` corrects and scales volumes before translation with
the recipe of a checkpoint's training facts (:meth:`SliceRecipe.from_facts`), with step 2's rule
(all three axes resampled when any is off the grid) and its own tolerance (5% by default).
Caches and checkpoints from before bias correction existed read back as ``method="none"``, so
they behave as they always did.

Example:
    >>> recipe = SliceRecipe(axis="coronal", pad_multiple=8)
    >>> recipe.slice_shape([(30, 17), (28, 20)])
    (32, 24)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np

from segrenorm.data.facts import TrainingFacts
from segrenorm.data.grid import canonical_spacing, on_grid
from segrenorm.errors import ConfigError
from segrenorm.vocabulary import SLICE_AXES, check_modality
from segrenorm.volumes.bias import NO_BIAS_CORRECTION, BiasCorrection
from segrenorm.volumes.images import Geometry, LabelMap, ScalarImage
from segrenorm.volumes.intensity import (
    IntensityScaling,
    check_headroom,
    fit_scaling,
    foreground_mask,
)
from segrenorm.volumes.retina import retina_mask
from segrenorm.volumes.spatial import (
    from_canonical,
    resample_to_spacing,
    round_up,
    slice_volume,
    to_canonical,
)

__all__ = ["ScaledVolume", "SliceRecipe"]

VolumeT = TypeVar("VolumeT", ScalarImage, LabelMap)


class ScaledVolume(NamedTuple):
    """A volume scaled by a recipe.

    Args:
        scaled: (X, Y, Z) float32 in [-1, 1], background -1 (OCT: the background keeps its
            scaled intensities).
        mask: (X, Y, Z) bool foreground, or None when the recipe uses no mask.
        scaling: the fitted map from the volume's (bias-corrected) intensities to [-1, 1].
    """

    scaled: np.ndarray
    mask: np.ndarray | None
    scaling: IntensityScaling


@dataclass(frozen=True)
class SliceRecipe:
    """How volumes become training-like slices (see the module docstring for the steps).

    Args:
        axis: slice plane, ``"axial"``, ``"coronal"`` or ``"sagittal"`` (see ``SLICE_AXES``).
        spacing: voxel size (mm, RAS axes) to resample to, or None to keep each volume's own.
        percentiles: foreground intensity percentiles mapped to -1 and 1.
        use_mask: fit the scaling inside an automatic foreground mask and set the rest to -1;
            without it the whole volume is foreground.
        pad_multiple: slice height and width are padded to a multiple of this.
        bias: the bias-field correction before scaling; the default ``method="none"`` is what
            a cache or checkpoint without the setting means (``prepare`` chooses N4).
        modality: ``"mri"`` (default) or ``"oct"`` (see the module docstring).
        headroom: raise the intensity mapped to 1 by this fraction of the percentile range,
            so that hyperintensities (FLAIR lesions) stay below the clip (see
            :func:`~segrenorm.volumes.intensity.fit_scaling`); 0 keeps the percentile itself.

    Raises:
        ConfigError: an unknown axis or modality, a spacing that is not three positive
            numbers, percentiles outside ``0 <= lower < upper <= 100``, a headroom outside
            ``[0, MAX_HEADROOM]``, a ``pad_multiple``
            below 1, or an OCT recipe with a bias correction.
    """

    axis: str = "axial"
    spacing: tuple[float, float, float] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    use_mask: bool = True
    pad_multiple: int = 16
    bias: BiasCorrection = NO_BIAS_CORRECTION
    modality: str = "mri"
    headroom: float = 0.0

    def __post_init__(self) -> None:
        if self.axis not in SLICE_AXES:
            raise ConfigError(f"unknown slice axis {self.axis!r}: choose {', '.join(SLICE_AXES)}")
        spacing = self.spacing
        if spacing is not None:
            if len(spacing) != 3 or any(not s > 0 for s in spacing):
                raise ConfigError(f"spacing {spacing!r} must be three positive numbers (mm)")
            object.__setattr__(
                self, "spacing", (float(spacing[0]), float(spacing[1]), float(spacing[2]))
            )
        lower_pct, upper_pct = self.percentiles
        if not 0.0 <= lower_pct < upper_pct <= 100.0:
            raise ConfigError(
                f"percentiles {lower_pct}, {upper_pct} must be 0 <= lower < upper <= 100"
            )
        object.__setattr__(self, "headroom", check_headroom(self.headroom))
        if self.pad_multiple < 1:
            raise ConfigError(f"pad_multiple {self.pad_multiple} must be >= 1")
        if not isinstance(self.bias, BiasCorrection):
            raise ConfigError(f"bias {self.bias!r} must be a BiasCorrection")
        check_modality(self.modality)
        if self.is_oct and self.axis != "axial":
            raise ConfigError(
                f"OCT volumes are cut along B-scans, not {self.axis!r} planes (en-face or depth "
                "slices): use --axis axial, the third voxel axis of (A-scan, depth, B-scan)"
            )
        if self.is_oct and self.bias.enabled:
            raise ConfigError(
                f"OCT volumes are not bias-corrected (asked for {self.bias.method}): OCT takes "
                "--bias-correction none"
            )

    @property
    def is_oct(self) -> bool:
        """Whether the recipe is OCT's (nearest-neighbour images, retina mask, no N4)."""
        return self.modality == "oct"

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> SliceRecipe:
        """The recipe a slice cache was prepared with.

        Args:
            manifest: a validated ``manifest.json`` (see ``docs/cache-format.md``); caches
                written before a field existed get that field's default.

        Raises:
            ConfigError: the manifest holds an invalid recipe.
        """
        spacing: Sequence[float] | None = manifest.get("spacing")
        low, high = manifest.get("percentiles", (0.5, 99.5))
        return cls(
            axis=str(manifest["slice_axis"]),
            spacing=None if spacing is None else (spacing[0], spacing[1], spacing[2]),
            percentiles=(float(low), float(high)),
            use_mask=bool(manifest.get("use_mask", True)),
            pad_multiple=int(manifest.get("pad_multiple", 16)),
            bias=BiasCorrection.from_dict(manifest.get("bias_correction")),
            modality=str(manifest.get("modality", "mri")),  # absent before OCT: MRI
            headroom=float(manifest.get("headroom", 0.0)),  # absent before it existed: none
        )

    @classmethod
    def from_facts(cls, facts: TrainingFacts) -> SliceRecipe:
        """The recipe of a model's training slices, from the facts its checkpoint stores.

        Args:
            facts: the checkpoint's :class:`~segrenorm.data.facts.TrainingFacts`; its spacing
                is the training spacing (the cache's, or its subjects' median).
        """
        return cls(
            axis=facts.slice_axis,
            spacing=facts.spacing,
            percentiles=facts.percentiles,
            headroom=facts.headroom,
            use_mask=facts.use_mask,
            pad_multiple=facts.pad_multiple,
            bias=facts.bias_correction,
            modality=facts.modality,
        )

    def orient(self, volume: VolumeT) -> VolumeT:
        """Step 1: the volume in RAS+ orientation; an OCT volume in its stored voxel order.

        Args:
            volume: a ``ScalarImage`` or ``LabelMap`` as loaded.
        """
        return volume if self.is_oct else to_canonical(volume)

    def unorient(self, data: np.ndarray, original: Geometry) -> np.ndarray:
        """Undo :meth:`orient` on an array of the oriented volume's shape.

        Args:
            data: ``(X, Y, Z)`` array in the oriented voxel order (a harmonized volume).
            original: the geometry of the volume before :meth:`orient`.
        """
        return data if self.is_oct else from_canonical(data, original)

    def grid_spacing(self, geometry: Geometry) -> tuple[float, float, float]:
        """A volume's voxel size along the axes :meth:`orient` gives it (mm), from its header.

        Args:
            geometry: the volume's geometry as stored.
        """
        if self.is_oct:
            return (float(geometry.spacing[0]), float(geometry.spacing[1]),
                    float(geometry.spacing[2]))  # fmt: skip
        return canonical_spacing(geometry)

    def to_grid(self, volume: VolumeT) -> VolumeT:
        """Steps 1 and 2: the volume oriented (:meth:`orient`), on the recipe's spacing if it
        has one.

        A volume already on the spacing (:func:`~segrenorm.data.grid.on_grid`) is only
        reoriented, so its voxels are exactly the stored ones.

        Args:
            volume: a ``ScalarImage`` (linear interpolation; OCT: nearest neighbour) or a
                ``LabelMap`` (nearest).
        """
        canonical = self.orient(volume)
        if self.spacing is None or on_grid(canonical.geometry.spacing, self.spacing):
            return canonical
        # Label maps are always nearest neighbour; images by the modality's rule.
        how = self.interpolation if isinstance(canonical, ScalarImage) else None
        return resample_to_spacing(canonical, self.spacing, interpolation=how)

    @property
    def interpolation(self) -> str:
        """How images are resampled: ``"nearest"`` for OCT (the paper's rule), else linear."""
        return "nearest" if self.is_oct else "linear"

    def mask(self, data: np.ndarray) -> np.ndarray | None:
        """Step 3: the automatic foreground of ``data``, or None when the recipe uses no mask.

        MRI: the head (:func:`~segrenorm.volumes.intensity.foreground_mask`); OCT: the retina
        (:func:`~segrenorm.volumes.retina.retina_mask`, depth along the second axis).

        Args:
            data: (X, Y, Z) intensities on the recipe's grid.

        Raises:
            InputError: no voxel is above the foreground threshold (OCT: no retina found).
        """
        if not self.use_mask:
            return None
        return retina_mask(data) if self.is_oct else foreground_mask(data)

    def scale(
        self,
        data: np.ndarray,
        *,
        spacing: Sequence[float] | None = None,
        mask_of: np.ndarray | None = None,
    ) -> ScaledVolume:
        """Steps 3 to 5: find the foreground, correct the bias field inside it, and fit and
        apply the percentile scaling inside it (OCT: apply it to the whole volume).

        Args:
            data: (X, Y, Z) intensities on the recipe's grid.
            spacing: the grid's voxel size in mm (X, Y, Z); needed when the recipe corrects
                the bias field, which is fitted in physical units.
            mask_of: take the foreground from this volume instead of ``data`` (a harmonized
                volume is scaled inside its source volume's foreground).

        Raises:
            ConfigError: the recipe corrects the bias field and no spacing was given.
            InputError: an empty foreground, constant intensities inside it, or a volume
                the bias correction cannot fit (see :meth:`BiasCorrection.apply`).
        """
        mask = self.mask(data if mask_of is None else mask_of)
        if self.bias.enabled:
            if spacing is None:
                raise ConfigError(
                    f"the slicing recipe corrects the bias field ({self.bias.method}) and "
                    "needs the grid's voxel spacing: pass spacing="
                )
            data = self.bias.apply(data, spacing, mask)
        scaling = fit_scaling(data, mask, *self.percentiles, headroom=self.headroom)
        # OCT keeps its background (clipped, not -1): the stripes a translator may paint there
        # must stay measurable against the target scanner's own background.
        return ScaledVolume(scaling.apply(data, None if self.is_oct else mask), mask, scaling)

    def cut(self, volume: np.ndarray) -> np.ndarray:
        """Step 6: the slices of a (X, Y, Z) array along the recipe's axis, ``(n, H, W)``.

        Args:
            volume: an array on the recipe's grid (image, labels or mask).
        """
        return slice_volume(volume, self.axis)

    def slice_shape(self, planes: Iterable[Sequence[int]]) -> tuple[int, int]:
        """Step 6: the shared ``(H, W)`` that slices of these sizes are padded to.

        Args:
            planes: the ``(H, W)`` of each volume's slices.
        """
        sizes = [(int(p[0]), int(p[1])) for p in planes]
        return (
            round_up(max(h for h, _ in sizes), self.pad_multiple),
            round_up(max(w for _, w in sizes), self.pad_multiple),
        )
