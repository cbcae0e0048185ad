"""Virtual subjects: the MNI152 template anatomy and smooth random deformations of it.

:func:`load_mni152_anatomy` reads the MNI152 2009 T1 template, its grey/white-matter
probability maps and brain mask as shipped (offline) by nilearn. :func:`warp_anatomy` turns it
into a virtual subject: a random affine and a smooth elastic displacement are composed into one
coordinate map, applied to every tissue map in a single linear-interpolation pass.
:func:`tissue_labels` gives the hard label map of any anatomy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segrenorm.errors import ConfigError, InputError
from segrenorm.simulate.scanners import smooth_random_fields

__all__ = [
    "LABEL_NAMES",
    "Anatomy",
    "Variability",
    "load_mni152_anatomy",
    "tissue_labels",
    "warp_anatomy",
]

#: Label values of the ``*_dseg`` maps.
LABEL_NAMES: dict[int, str] = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}
# Below this total tissue probability a voxel lies outside the (warped) brain mask.
_BRAIN_THRESHOLD = 0.5
# The template's texture is relative to a tissue fit; cap it where the fit is unreliable.
_TEXTURE_CLIP = 0.5


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Tissue probability maps and fine texture of one (virtual) subject on a voxel grid.

    Args:
        csf: CSF probability, float32 (X, Y, Z); csf + gm + wm is the brain mask.
        gm: Grey-matter probability, same shape.
        wm: White-matter probability, same shape.
        texture: Relative deviation of the real T1 from its tissue fit (0 = none).
        affine: (4, 4) voxel-to-world matrix in mm (RAS+).
    """

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    texture: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel grid size."""
        x, y, z = self.csf.shape
        return (x, y, z)

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        x, y, z = (float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
        return (x, y, z)

    @classmethod
    def from_template(
        cls, t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, mask: np.ndarray, affine: np.ndarray
    ) -> Anatomy:
        """Derive CSF and the texture map from a T1 template, GM/WM maps and a brain mask.

        Args:
            t1: T1-weighted template, any positive scale.
            gm: Grey-matter probabilities in [0, 1].
            wm: White-matter probabilities in [0, 1].
            mask: Brain mask (non-zero inside).
            affine: (4, 4) voxel-to-world matrix of all four arrays.

        Returns:
            The anatomy, with ``csf = clip(mask - gm - wm, 0, 1)`` and GM/WM zeroed outside
            the mask so that the tissue probabilities add up to the mask.

        Raises:
            InputError: If the arrays are not 3D, differ in shape or hold non-finite values.
        """
        arrays = {"t1": t1, "gm": gm, "wm": wm, "mask": mask}
        for name, arr in arrays.items():
            if arr.ndim != 3 or arr.shape != t1.shape:
                raise InputError(
                    f"template {name}: shape {arr.shape} does not match t1 {t1.shape}; "
                    "all maps must be 3D on one grid"
                )
            if not np.all(np.isfinite(arr)):
                raise InputError(f"template {name}: holds NaN or infinite values; clean it first")
        inside = (mask > 0).astype(np.float32)
        gm32 = np.clip(gm, 0, 1).astype(np.float32) * inside
        wm32 = np.clip(wm, 0, 1).astype(np.float32) * inside
        csf32 = np.clip(inside - gm32 - wm32, 0, 1)
        t1_32 = t1.astype(np.float32)
        # Per-tissue template intensities by least squares, then texture = t1 / fit - 1.
        sel = inside > 0
        design = np.stack([csf32[sel], gm32[sel], wm32[sel]], axis=1)
        means = np.linalg.lstsq(design, t1_32[sel], rcond=None)[0].astype(np.float32)
        fit = means[0] * csf32 + means[1] * gm32 + means[2] * wm32
        reliable = fit > 0.1 * float(fit.max()) if fit.max() > 0 else np.zeros_like(sel)
        texture = np.zeros_like(t1_32)
        texture[reliable] = t1_32[reliable] / fit[reliable] - 1.0
        np.clip(texture, -_TEXTURE_CLIP, _TEXTURE_CLIP, out=texture)
        return cls(csf32, gm32, wm32, texture, np.asarray(affine, dtype=np.float64))

    @functools.cached_property
    def support(self) -> np.ndarray:
        """Voxels within one voxel (in each axis) of any non-zero tissue or texture value."""
        nonzero = (self.csf != 0) | (self.gm != 0) | (self.wm != 0) | (self.texture != 0)
        return np.asarray(ndimage.maximum_filter(nonzero, size=3, mode="constant"), dtype=bool)

    def crop(self, box: tuple[slice, slice, slice]) -> Anatomy:
        """Return a sub-volume (e.g. for fast tests); the affine moves with the origin.

        Args:
            box: One ``slice(start, stop)`` per axis, step 1.
        """
        starts = np.array([s.indices(n)[0] for s, n in zip(box, self.shape, strict=True)])
        affine = self.affine.copy()
        affine[:3, 3] += affine[:3, :3] @ starts
        csf, gm, wm, texture = (
            np.ascontiguousarray(a[box]) for a in (self.csf, self.gm, self.wm, self.texture)
        )
        return Anatomy(csf, gm, wm, texture, affine)


@functools.lru_cache(maxsize=2)
def load_mni152_anatomy(resolution: int = 2) -> Anatomy:
    """Load the MNI152 2009 template and tissue maps shipped with nilearn (cached in-process).

    Args:
        resolution: Voxel size in mm, 1 (197x233x189) or 2 (99x117x95).

    Returns:
        The template anatomy (do not modify its arrays: they are shared).

    Raises:
        ConfigError: If ``resolution`` is not 1 or 2.
    """
    if resolution not in (1, 2):
        raise ConfigError(f"resolution {resolution!r} is not supported; use 1 or 2 (mm)")
    from nilearn import datasets  # slow import, only needed here

    t1_img = datasets.load_mni152_template(resolution=resolution)
    maps = [
        datasets.load_mni152_gm_template(resolution=resolution),
        datasets.load_mni152_wm_template(resolution=resolution),
        datasets.load_mni152_brain_mask(resolution=resolution),
    ]
    gm, wm, mask = (np.asarray(m.get_fdata(dtype=np.float32)) for m in maps)
    t1 = np.asarray(t1_img.get_fdata(dtype=np.float32))
    return Anatomy.from_template(t1, gm, wm, mask, np.asarray(t1_img.affine))


@dataclass(frozen=True)
class Variability:
    """How much virtual subjects differ from the template (standard deviations).

    Args:
        rotation_deg: Rotation about each axis, degrees.
        scale: Log-scale per axis (0.04 is about +-4 %).
        shear: Off-diagonal shear terms.
        translation_mm: Translation along each axis, mm.
        elastic_mm: Elastic displacement per component, mm.
        elastic_spacing_mm: Correlation length of the elastic field, mm.
    """

    rotation_deg: float = 3.0
    scale: float = 0.04
    shear: float = 0.02
    translation_mm: float = 3.0
    elastic_mm: float = 1.5
    elastic_spacing_mm: float = 20.0


def _truncated_normal(rng: np.random.Generator, std: float, size: int) -> np.ndarray:
    # Truncation keeps a rare extreme draw from producing an implausible head.
    return np.clip(rng.standard_normal(size), -2.5, 2.5) * std


def _random_linear(rng: np.random.Generator, var: Variability) -> np.ndarray:
    ax, ay, az = np.deg2rad(_truncated_normal(rng, var.rotation_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    scale = np.diag(np.exp(_truncated_normal(rng, var.scale, 3)))
    shear = np.eye(3)
    shear[np.triu_indices(3, 1)] = _truncated_normal(rng, var.shear, 3)
    return rz @ ry @ rx @ scale @ shear


def warp_anatomy(
    anatomy: Anatomy, deformation_seed: int, variability: Variability | None = None
) -> Anatomy:
    """Make a virtual subject: random affine plus elastic warp, one interpolation per map.

    Args:
        anatomy: The template anatomy.
        deformation_seed: Seed of the deformation; the same seed gives the same subject.
        variability: Deformation magnitudes; defaults to :class:`Variability`.

    Returns:
        The warped anatomy on the same grid (same affine).
    """
    var = variability or Variability()
    rng = np.random.default_rng(deformation_seed)
    shape, zooms = anatomy.shape, np.array(anatomy.zooms)
    linear = _random_linear(rng, var)
    shift = _truncated_normal(rng, var.translation_mm, 3)
    # Displacements are drawn coarse and expanded separably: smooth by construction.
    coords = smooth_random_fields(shape, anatomy.zooms, var.elastic_spacing_mm, rng, count=3)
    centre = (np.array(shape) - 1) / 2.0
    # Output voxel v samples the template at c + (A (v - c) z + t + d(v)) / z (mm inside the
    # brackets). The affine part is a sum of three 1-D ramps per axis, so only the final
    # broadcast addition touches the full grid.
    for i in range(3):
        coords[i] *= np.float32(var.elastic_mm / zooms[i])
        ramps = [
            (linear[i, j] * zooms[j] / zooms[i] * (np.arange(n) - centre[j])).astype(np.float32)
            for j, n in enumerate(shape)
        ]
        ramps[0] += np.float32(shift[i] / zooms[i] + centre[i])
        coords[i] += (ramps[0][:, None] + ramps[1][None, :])[:, :, None] + ramps[2]
    # Interpolate only where a map can be non-zero: most of the grid samples empty space.
    # Linear interpolation reads the two voxels around each coordinate; both lie within one
    # voxel of the rounded coordinate, so the one-voxel-dilated support is exact.
    nearest = np.rint(coords).astype(np.intp)
    sampled = np.ones(shape, dtype=bool)
    for i, n in enumerate(shape):
        sampled &= (nearest[i] >= 0) & (nearest[i] < n)
        np.clip(nearest[i], 0, n - 1, out=nearest[i])
    sampled &= anatomy.support[nearest[0], nearest[1], nearest[2]]
    points = coords[:, sampled]  # (3, M) with M the voxels that may be non-zero
    warped = []
    for arr in (anatomy.csf, anatomy.gm, anatomy.wm, anatomy.texture):
        out = np.zeros(shape, dtype=np.float32)
        out[sampled] = ndimage.map_coordinates(
            arr, points, order=1, mode="constant", cval=0.0, output=np.float32, prefilter=False
        )
        warped.append(out)
    csf, gm, wm, texture = warped
    return Anatomy(csf, gm, wm, texture, anatomy.affine)


def tissue_labels(anatomy: Anatomy) -> np.ndarray:
    """Hard labels (0 background, 1 CSF, 2 GM, 3 WM) by argmax inside the brain.

    Args:
        anatomy: Tissue probability maps.

    Returns:
        uint8 label map of the anatomy's shape.
    """
    probs = np.stack([anatomy.csf, anatomy.gm, anatomy.wm])
    labels = (probs.argmax(axis=0) + 1).astype(np.uint8)
    labels[probs.sum(axis=0) < _BRAIN_THRESHOLD] = 0
    return labels
