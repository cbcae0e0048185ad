"""MS-like white-matter lesions for virtual subjects: count, placement, shape, partial volume.

:func:`add_lesions` draws the lesions of one (warped) subject from a random generator:

* **count**: a gamma-Poisson (negative binomial) draw clipped to ``0..max_count`` (30), so
  lesion loads are skewed and some subjects have none (:func:`draw_lesion_count`);
* **placement**: each lesion's centre is a white-matter voxel (probability >= 0.7) of one class
  (:func:`placement_candidates`): *periventricular* within 5 mm of the lateral ventricles,
  *juxtacortical* within 3 mm of grey matter and over 10 mm from the ventricles, *deep* at
  least 6 mm from both. The lateral ventricles are the CSF (probability >= 0.5) deeper than
  15 mm under the brain surface, in the connected parts holding at least 40 % of the largest
  one's volume (:func:`ventricle_mask`). Distances run between voxel centres, in mm;
* **volume**: 3 to 1500 mm^3, ``log V`` drawn as ``u ** 1.6`` of the log range (``u``
  uniform), so most lesions are small (median about 20 mm^3);
* **shape**: an ellipsoid, an ellipsoid with a smooth random radial perturbation
  (irregular), or two to four merged ellipsoidal blobs; a few lesions (10 %) are confluent:
  two or three overlapping neighbouring lesions merged into one;
* **partial volume**: the shape is sampled every 0.5 mm inside each voxel, and the occupied
  fraction, clipped to the voxel's white-matter probability, is the lesion probability map.
  Lesions replace white matter in the tissue mixture (``wm - probability``), so a 3 mm^3
  lesion on a 2 mm grid (8 mm^3 voxels) is rendered as a faint partial-volume spot.

The binary mask marks the voxels where a lesion's own probability is at least 0.5; a lesion
with no such voxel (sub-voxel, at 2 mm) marks its most probable voxel with a white-matter
probability of at least 0.5, so every lesion appears in the mask. Each lesion is one
face-connected (6-connected) component of the mask, and distinct lesions never touch, not even
diagonally, so connected components of the mask (6- or 26-connected) are the lesions. A drawn
lesion that breaks these rules (or falls outside the volume range once clipped to white
matter) is drawn again, at most 20 times; ``Lesions.requested`` keeps the drawn count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from segrenorm.errors import ConfigError
from segrenorm.simulate.anatomy import Anatomy
from segrenorm.simulate.lesion_shapes import LesionShape, draw_shape, occupancy, unit_vectors

__all__ = [
    "LESION_CLASSES",
    "LESION_LABELS",
    "LesionRecord",
    "LesionSettings",
    "Lesions",
    "add_lesions",
    "draw_lesion_count",
    "placement_candidates",
    "ventricle_mask",
]

#: Placement classes, in the order of :attr:`LesionSettings.class_weights`.
LESION_CLASSES: tuple[str, ...] = ("periventricular", "juxtacortical", "deep")
#: Label values of the binary lesion masks.
LESION_LABELS: dict[int, str] = {0: "background", 1: "lesion"}
_CENTRE_WM = 0.7  # white-matter probability of a lesion centre voxel
_TISSUE = 0.5  # probability that makes a voxel CSF / GM / WM for the distance rules
_VENTRICLE_DEPTH_MM = 15.0
_VENTRICLE_SHARE = 0.4
_ATTEMPTS = 20
_FACES = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class LesionSettings:
    """How many lesions a subject gets, where, how large and of what shape.

    Args:
        max_count: Most lesions per subject (counts above are clipped).
        mean_count: Mean of the gamma distribution of a subject's lesion rate.
        count_shape: Shape of that gamma distribution; smaller values give more lesion-free
            and more heavily loaded subjects.
        min_volume_mm3: Smallest lesion volume (after clipping to white matter), mm^3.
        max_volume_mm3: Largest lesion volume, mm^3 (a confluent lesion counts as one).
        volume_skew: Exponent of the log-volume draw (1 is log-uniform; above 1, more small).
        class_weights: Probabilities of periventricular, juxtacortical and deep lesions.
        confluent_fraction: Probability that a lesion is two or three merged neighbours.
        periventricular_mm: Periventricular centres lie this close to the ventricles.
        juxtacortical_mm: Juxtacortical centres lie this close to grey matter.
        deep_margin_mm: Deep centres lie at least this far from grey matter and ventricles.
        supersample_mm: Spacing of the partial-volume samples inside a voxel, mm.
    """

    max_count: int = 30
    mean_count: float = 10.0
    count_shape: float = 1.2
    min_volume_mm3: float = 3.0
    max_volume_mm3: float = 1500.0
    volume_skew: float = 1.6
    class_weights: tuple[float, float, float] = (0.45, 0.25, 0.3)
    confluent_fraction: float = 0.1
    periventricular_mm: float = 5.0
    juxtacortical_mm: float = 3.0
    deep_margin_mm: float = 6.0
    supersample_mm: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.max_count <= 1000:
            raise ConfigError(f"lesions: max_count={self.max_count!r} must lie in [0, 1000]")
        if not 0 < self.min_volume_mm3 < self.max_volume_mm3:
            raise ConfigError(
                f"lesions: volumes [{self.min_volume_mm3}, {self.max_volume_mm3}] mm^3 must "
                "satisfy 0 < min_volume_mm3 < max_volume_mm3"
            )
        weights = self.class_weights
        if len(weights) != 3 or min(weights) < 0 or not math.isclose(sum(weights), 1.0):
            raise ConfigError(
                f"lesions: class_weights={weights!r} must be three non-negative numbers "
                f"adding up to 1 ({', '.join(LESION_CLASSES)})"
            )
        for name in ("mean_count", "count_shape", "volume_skew", "supersample_mm"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"lesions: {name}={getattr(self, name)!r} must be positive")
        if not 0.0 <= self.confluent_fraction <= 1.0:
            raise ConfigError(
                f"lesions: confluent_fraction={self.confluent_fraction!r} must lie in [0, 1]"
            )


@dataclass(frozen=True)
class LesionRecord:
    """One lesion as placed: what ``simulation.json`` records of it.

    Args:
        lesion_class: One of :data:`LESION_CLASSES` (a confluent lesion: its first part's).
        centre: Centre of its first part in voxel coordinates (rounded: the candidate voxel
            of :func:`placement_candidates` it was drawn from).
        volume_mm3: Partial-volume volume: the sum of its probability map times the voxel
            volume.
        mask_voxels: Its voxels in the binary mask.
        shape: ``"ellipsoid"``, ``"irregular"`` or ``"blobs"`` (a confluent lesion: its first
            part's).
        parts: Merged neighbouring lesions (1 unless confluent).
    """

    lesion_class: str
    centre: tuple[float, float, float]
    volume_mm3: float
    mask_voxels: int
    shape: str
    parts: int

    @property
    def confluent(self) -> bool:
        """Whether the lesion is several merged neighbours."""
        return self.parts > 1

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-serialisable dict (volumes rounded to 0.01 mm^3)."""
        return {
            "class": self.lesion_class,
            "centre_voxel": [round(c, 2) for c in self.centre],
            "volume_mm3": round(self.volume_mm3, 2),
            "mask_voxels": self.mask_voxels,
            "shape": self.shape,
            "parts": self.parts,
            "confluent": self.confluent,
        }


@dataclass(frozen=True, eq=False)
class Lesions:
    """The lesions of one subject on its anatomy's grid.

    Args:
        probability: float32 lesion partial-volume map, never above the WM probability.
        mask: uint8 binary lesion mask (0 background, 1 lesion), rule in the module docs.
        index: int16 map of lesion numbers on the mask (``k`` for ``records[k - 1]``).
        records: The placed lesions.
        requested: The drawn count (lesions that could not be placed are missing).
    """

    probability: np.ndarray
    mask: np.ndarray
    index: np.ndarray
    records: tuple[LesionRecord, ...]
    requested: int

    def summary(self) -> dict[str, Any]:
        """Count, volumes, classes and shapes of the lesions, for ``simulation.json``."""
        return {
            "count": len(self.records),
            "requested": self.requested,
            "total_volume_mm3": round(sum(r.volume_mm3 for r in self.records), 2),
            "volumes_mm3": [round(r.volume_mm3, 2) for r in self.records],
            "classes": {c: sum(r.lesion_class == c for r in self.records) for c in LESION_CLASSES},
            "confluent": sum(r.confluent for r in self.records),
            "mask_voxels": int(self.mask.sum()),
            "lesions": [r.to_dict() for r in self.records],
        }


def draw_lesion_count(rng: np.random.Generator, settings: LesionSettings) -> int:
    """Draw one subject's lesion count: Poisson of a gamma-distributed rate, clipped.

    Args:
        rng: Random generator.
        settings: ``mean_count``, ``count_shape`` and ``max_count`` are used.

    Returns:
        A count in ``0..settings.max_count``.
    """
    rate = rng.gamma(settings.count_shape, settings.mean_count / settings.count_shape)
    return int(min(rng.poisson(rate), settings.max_count))


def _brain_box(anatomy: Anatomy) -> tuple[slice, slice, slice]:
    # Distances are only needed inside the brain: compute them on its bounding box (plus a
    # margin of background, so that the brain surface lies inside the box).
    brain = (anatomy.csf + anatomy.gm + anatomy.wm) >= _TISSUE
    if not brain.any():
        return (slice(0, 0), slice(0, 0), slice(0, 0))
    box = []
    for axis, n in enumerate(brain.shape):
        hit = np.nonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        box.append(slice(max(int(hit[0]) - 2, 0), min(int(hit[-1]) + 3, n)))
    return (box[0], box[1], box[2])


def ventricle_mask(anatomy: Anatomy) -> np.ndarray:
    """The lateral ventricles: deep CSF in the largest connected parts (module docs).

    Args:
        anatomy: Tissue probability maps.

    Returns:
        Boolean map of the anatomy's shape (all False if there is no deep CSF).
    """
    box = _brain_box(anatomy)
    out = np.zeros(anatomy.shape, dtype=bool)
    brain = (anatomy.csf[box] + anatomy.gm[box] + anatomy.wm[box]) >= _TISSUE
    if not brain.any():
        return out
    depth = ndimage.distance_transform_edt(np.pad(brain, 1), sampling=anatomy.zooms)[
        1:-1, 1:-1, 1:-1
    ]
    deep = (anatomy.csf[box] >= _TISSUE) & (depth >= _VENTRICLE_DEPTH_MM)
    parts, n = ndimage.label(deep)
    if n == 0:
        return out
    sizes = np.bincount(parts.ravel())[1:]
    keep = np.flatnonzero(sizes >= _VENTRICLE_SHARE * sizes.max()) + 1
    out[box] = np.isin(parts, keep)
    return out


def _distance_to(region: np.ndarray, zooms: tuple[float, float, float]) -> np.ndarray:
    if not region.any():
        return np.full(region.shape, np.inf, dtype=np.float32)
    distance = ndimage.distance_transform_edt(~region, sampling=zooms)
    return np.asarray(distance, dtype=np.float32)


def placement_candidates(
    anatomy: Anatomy, settings: LesionSettings | None = None
) -> dict[str, np.ndarray]:
    """The voxels that may hold the centre of a lesion of each class (module docs).

    Args:
        anatomy: Tissue probability maps.
        settings: Distance rules; defaults to :class:`LesionSettings`.

    Returns:
        For each of :data:`LESION_CLASSES`, an int array (N, 3) of voxel indices (may be empty).
    """
    cfg = settings or LesionSettings()
    box = _brain_box(anatomy)
    starts = np.array([s.start for s in box], dtype=np.intp)
    zooms = anatomy.zooms
    to_ventricles = _distance_to(ventricle_mask(anatomy)[box], zooms)
    to_gm = _distance_to(anatomy.gm[box] >= _TISSUE, zooms)
    core = anatomy.wm[box] >= _CENTRE_WM
    rules = {
        "periventricular": to_ventricles <= cfg.periventricular_mm,
        "juxtacortical": (to_gm <= cfg.juxtacortical_mm)
        & (to_ventricles > 2 * cfg.periventricular_mm),
        "deep": (to_gm >= cfg.deep_margin_mm) & (to_ventricles >= cfg.deep_margin_mm),
    }
    return {name: np.argwhere(core & rule) + starts for name, rule in rules.items()}


def _draw_volume(rng: np.random.Generator, cfg: LesionSettings, high: float) -> float:
    span = math.log(high / cfg.min_volume_mm3)
    return cfg.min_volume_mm3 * math.exp(span * float(rng.uniform()) ** cfg.volume_skew)


def _place_one(
    rng: np.random.Generator,
    anatomy: Anatomy,
    candidates: dict[str, np.ndarray],
    cfg: LesionSettings,
    taken: np.ndarray,
) -> tuple[LesionRecord, tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
    """Draw one lesion (maybe confluent); None when it breaks a rule of the module docs."""
    classes = [c for c in LESION_CLASSES if len(candidates[c])]
    weights = np.array([cfg.class_weights[LESION_CLASSES.index(c)] for c in classes])
    if weights.sum() <= 0:
        weights = np.ones(len(classes))
    lesion_class = classes[int(rng.choice(len(classes), p=weights / weights.sum()))]
    n_parts = int(rng.integers(2, 4)) if rng.uniform() < cfg.confluent_fraction else 1
    pool = candidates[lesion_class]
    zooms = np.array(anatomy.zooms)
    # Jittered inside its voxel: rounding the centre gives the candidate voxel back.
    centre_voxel = pool[int(rng.integers(len(pool)))] + rng.uniform(-0.49, 0.49, 3)
    centre = centre_voxel * zooms
    parts: list[tuple[LesionShape, np.ndarray, float]] = []
    for k in range(n_parts):
        part = draw_shape(rng)
        volume = _draw_volume(rng, cfg, cfg.max_volume_mm3 / n_parts)
        scale = math.cbrt(volume / part.unit_volume())
        if k:  # a neighbour overlapping the previous part, so that the two merge
            _, last, last_scale = parts[-1]
            reach = 0.6 * (part.radius * scale + parts[-1][0].radius * last_scale)
            centre = last + unit_vectors(rng, 1)[0] * reach * float(rng.uniform(0.4, 0.8))
        parts.append((part, centre, scale))
    found = occupancy(parts, anatomy.shape, anatomy.zooms, cfg.supersample_mm)
    if found is None:
        return None
    box, occupied = found
    wm = anatomy.wm[box]
    probability = np.minimum(occupied, wm)
    support = probability > 0
    near = ndimage.binary_dilation(support, structure=np.ones((3, 3, 3), dtype=bool))
    if not support.any() or np.any(near & taken[box]):
        return None  # empty, or touching another lesion
    binary = probability >= 0.5
    if not binary.any():
        eligible = np.where(wm >= 0.5, probability, 0.0)
        if eligible.max() <= 0:
            return None
        binary.flat[int(eligible.argmax())] = True
    if ndimage.label(binary, structure=_FACES)[1] != 1:
        return None  # split in two by the white-matter clip
    volume = float(probability.sum(dtype=np.float64)) * float(np.prod(zooms))
    if not cfg.min_volume_mm3 <= volume <= cfg.max_volume_mm3:
        return None
    centre_out = (float(centre_voxel[0]), float(centre_voxel[1]), float(centre_voxel[2]))
    record = LesionRecord(
        lesion_class, centre_out, volume, int(binary.sum()), parts[0][0].shape, n_parts
    )
    return record, box, probability, binary


def add_lesions(
    anatomy: Anatomy, rng: np.random.Generator, settings: LesionSettings | None = None
) -> Lesions:
    """Draw and render the white-matter lesions of one subject (rules: module docs).

    Args:
        anatomy: The subject's tissue probability maps (e.g. a warped MNI152 anatomy).
        rng: Random generator; the same generator state gives the same lesions.
        settings: Count, placement, volume and shape rules; defaults to
            :class:`LesionSettings`.

    Returns:
        The lesion probability map, binary mask, lesion index map and records.
    """
    cfg = settings or LesionSettings()
    requested = draw_lesion_count(rng, cfg)
    probability = np.zeros(anatomy.shape, dtype=np.float32)
    mask = np.zeros(anatomy.shape, dtype=np.uint8)
    index = np.zeros(anatomy.shape, dtype=np.int16)
    records: list[LesionRecord] = []
    candidates = placement_candidates(anatomy, cfg) if requested else {}
    # Without any white matter that can hold a lesion centre, no lesion can be placed.
    placeable = requested if any(len(v) for v in candidates.values()) else 0
    taken = np.zeros(anatomy.shape, dtype=bool)
    for _ in range(placeable):
        for _attempt in range(_ATTEMPTS):
            placed = _place_one(rng, anatomy, candidates, cfg, taken)
            if placed is None:
                continue
            record, box, local, binary = placed
            probability[box] += local
            taken[box] |= local > 0
            mask[box][binary] = 1
            index[box][binary] = len(records) + 1
            records.append(record)
            break
    return Lesions(probability, mask, index, tuple(records), requested)
