"""The on-disk slice cache: subject listings in, a folder of NumPy slice arrays + manifest out.

The layout is fixed in ``docs/cache-format.md``. A cache is built in a hidden sibling folder and
renamed into place only once its ``manifest.json`` (written last, ``"complete": true``) exists,
so an interrupted ``prepare`` never leaves anything that
:func:`~segrenorm.data.manifest.open_manifest` accepts.

Listings are read by ``segrenorm.data.listing``; the manifest format is
``segrenorm.data.manifest``'s and caches are read by ``segrenorm.data.slice_cache``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from segrenorm._version import __version__
from segrenorm.atomic import remove_stale_temporaries, replace_dir, temporary_dir
from segrenorm.data.autolabels import PseudoLabeller, pseudo_label_name, write_pseudo_label
from segrenorm.data.clipping import clipped_counts, clipping_warnings
from segrenorm.data.folds import LOSO, loso_folds
from segrenorm.data.grid import choose_grid
from segrenorm.data.labelplan import plan_auto_labels
from segrenorm.data.listing import SubjectRecord, check_distinct, site_order
from segrenorm.data.manifest import ARRAY_DTYPES, FORMAT_VERSION
from segrenorm.data.slicing import ScaledVolume, SliceRecipe
from segrenorm.data.splits import assign_splits
from segrenorm.errors import CacheError, ConfigError, InputError
from segrenorm.vocabulary import site_keys
from segrenorm.volumes.bias import DEFAULT_BIAS_CORRECTION, NO_BIAS_CORRECTION, BiasCorrection
from segrenorm.volumes.readwrite import load_image, load_label
from segrenorm.volumes.spatial import pad_to_shape

__all__ = ["prepare_cache"]

logger = logging.getLogger(__name__)


def _check_options(
    min_foreground: float,
    test_fraction: float,
    val_fraction: float,
    n_folds: int,
    n_classes: int | None,
) -> None:
    """Check the options beyond the slicing recipe (which checks its own)."""
    if not 0.0 <= min_foreground < 1.0:
        raise ConfigError(f"min_foreground {min_foreground} must be in [0, 1)")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction {test_fraction} must be in [0, 1)")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction {val_fraction} must be in [0, 1)")
    if test_fraction + val_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction {val_fraction} + test_fraction {test_fraction} must stay below 1 "
            "to leave subjects for training; lower one of them"
        )
    if n_folds < 1:
        raise ConfigError(f"n_folds {n_folds} must be >= 1")
    if n_classes is not None and not 1 <= n_classes <= 256:
        raise ConfigError(f"n_classes {n_classes} must be in 1..256 (labels are stored as uint8)")


def _process_subject(
    record: SubjectRecord,
    work: Path,
    index: int,
    *,
    recipe: SliceRecipe,
    n_classes: int | None,
    min_foreground: float,
    labeller: PseudoLabeller | None = None,
    pseudo_name: str = "",
) -> dict[str, Any]:
    """Load, canonicalize, resample, bias-correct, scale and slice one subject into unpadded
    work arrays; a subject without labels gets ``labeller``'s, also written to the cache's
    ``pseudo_name``."""
    original = load_image(record.image)
    own_grid = original.geometry
    original_spacing = recipe.grid_spacing(original.geometry)
    label = None
    if record.label is not None:
        # load_label checks the label's grid against the image's before either is reoriented.
        label = recipe.to_grid(load_label(record.label, n_classes=n_classes, like=original))
    image = recipe.to_grid(original)
    del original
    scaled, found, scaling = recipe.scale(image.data, spacing=image.geometry.spacing)
    mask = np.ones(image.data.shape, dtype=bool) if found is None else found
    labels = np.zeros(image.data.shape, np.uint8) if label is None else label.data
    source, label_path = ("file", str(record.label)) if label is not None else (None, None)
    if label is None and labeller is not None:
        labels = write_pseudo_label(
            labeller, ScaledVolume(scaled, found, scaling), recipe, grid=image.geometry,
            image=own_grid, path=work.parent / pseudo_name, subject=record.subject,
            n_classes=n_classes,
        )  # fmt: skip
        source, label_path = labeller.method, pseudo_name
    max_label = int(labels.max())
    if max_label > 255:
        raise InputError(f"{record.label}: label value {max_label} does not fit the cache (0..255)")
    mask_slices = recipe.cut(mask)
    fraction = mask_slices.reshape(mask_slices.shape[0], -1).mean(axis=1)
    keep = np.flatnonzero(fraction >= min_foreground)
    np.save(work / f"{index}_images.npy", recipe.cut(scaled)[keep])
    np.save(work / f"{index}_labels.npy", recipe.cut(labels)[keep].astype(np.uint8))
    np.save(work / f"{index}_masks.npy", mask_slices[keep].astype(np.uint8))
    np.save(work / f"{index}_keep.npy", keep.astype(np.int32))
    clipped = clipped_counts(scaled, labels, mask, n_classes=256)  # the whole foreground
    if keep.size == 0:
        logger.warning(
            "%s: no slice has %.0f%% foreground; none kept", record.image, 100 * min_foreground
        )
    return {
        "scaling": scaling.to_dict(),
        "shape": list(image.data.shape),
        "spacing": [float(s) for s in image.geometry.spacing],
        "original_spacing": [float(s) for s in original_spacing],
        "n_slices": int(keep.size),
        "plane": tuple(int(n) for n in mask_slices.shape[1:]),
        "max_label": max_label,
        "label": label_path,
        "label_source": source,
        "clipped": clipped,
    }


def _assemble(
    site_dir: Path, work: Path, rows: list[int], n_rows: int, shape: tuple[int, int]
) -> None:
    """Pad every subject's work arrays to ``shape`` and write the site's four arrays."""
    site_dir.mkdir()
    fill = {"images": -1.0, "labels": 0, "masks": 0}
    out = {
        name: np.lib.format.open_memmap(
            site_dir / f"{name}.npy",
            mode="w+",
            dtype=np.dtype(dtype),
            shape=(n_rows, 2) if name == "slices" else (n_rows, *shape),
        )
        for name, dtype in ARRAY_DTYPES.items()
    }
    start = 0
    for index in rows:
        keep = np.load(work / f"{index}_keep.npy")
        stop = start + keep.size
        for name, value in fill.items():
            out[name][start:stop] = pad_to_shape(
                np.load(work / f"{index}_{name}.npy"), shape, value
            )[0]
            (work / f"{index}_{name}.npy").unlink()
        out["slices"][start:stop, 0] = index
        out["slices"][start:stop, 1] = keep
        start = stop
    for array in out.values():
        array.flush()
    del out


def prepare_cache(
    records: Sequence[SubjectRecord],
    out_dir: str | Path,
    *,
    sites: Sequence[str] | None = None,
    n_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    slice_axis: str = "axial",
    spacing: tuple[float, float, float] | None = None,
    target: str | None = None,
    lower_pct: float = 0.5,
    upper_pct: float = 99.5,
    headroom: float = 0.0,
    min_foreground: float = 0.05,
    pad_multiple: int = 16,
    val_fraction: float = 0.15,
    test_fraction: float = 0.3,
    n_folds: int | str = 5,
    seed: int = 0,
    overwrite: bool = False,
    use_mask: bool = True,
    bias_correction: BiasCorrection | None = None,
    modality: str = "mri",
    auto_labels: str | PseudoLabeller | None = None,
    progress: bool = True,
) -> Path:
    """Slice two or more sites' volumes into one cache folder (layout: ``docs/cache-format.md``).

    Each volume is reoriented to RAS+, resampled to the cache's one grid, bias-corrected
    inside its foreground (N4 by default), scaled to ``[-1, 1]`` from its own foreground
    percentiles (background -1; OCT: see ``modality``) and sliced along ``slice_axis``; slices
    whose foreground fraction is below ``min_foreground`` are skipped and the rest are padded to
    one shared ``(H, W)`` (a multiple of ``pad_multiple``). Label maps are only reoriented,
    resampled with nearest neighbour and padded with 0. A record's ``split`` wins; the other
    subjects of each site are split among themselves with ``seed`` (sorted by subject id, so the
    listing order does not matter): ``test_fraction`` of them test, then ``val_fraction`` val,
    each rounded half up (see :func:`~segrenorm.data.splits.assign_splits`); every subject of a
    site gets a fold ``0..n_folds-1``.

    Args:
        records: the subjects of two or more sites.
        out_dir: cache folder to create.
        sites: every site name, in cache order (keys ``A``, ``B``, ``C``, ...; for two sites
            source then target); default: order of first appearance.
        n_classes: number of label classes; default: the number of ``class_names`` if given,
            else max label + 1 (at least 2), or 1 without labels. At most 256 (uint8 labels).
        class_names: one name per class; default ``background, class_1, ...``.
        slice_axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        spacing: the cache's grid: every volume is resampled to this spacing (mm, canonical
            axes) first; default the per-axis median voxel size of the ``target`` site's
            images (``segrenorm.data.grid``). Volumes already on the grid are not resampled.
        target: the site whose median voxel size is the grid; default the second site when
            there are two. With more sites, give ``target`` or ``spacing``.
        lower_pct: intensity percentile mapped to -1.
        upper_pct: intensity percentile mapped to 1 (with ``headroom`` 0).
        headroom: map the upper percentile plus this fraction of the percentile range to 1
            instead, so that hyperintense classes (FLAIR lesions: 1) keep their
            contrast; a class with most of its voxels clipped at +1 at some site is warned
            about (``segrenorm.data.clipping``).
        min_foreground: minimum fraction of a slice inside the foreground mask to keep it.
        pad_multiple: slice height and width are rounded up to a multiple of this.
        val_fraction: fraction of subjects without a listed split drawn as val (the split for
            tuning and checkpoint selection), per site; 0 for none.
        test_fraction: fraction of subjects without a listed split drawn as test, per site.
        n_folds: number of cross-validation folds per site, or ``"loso"``: one fold per
            person and site (:func:`~segrenorm.data.folds.loso_folds`).
        seed: seed of the split and fold draws.
        overwrite: replace an existing cache at ``out_dir`` (only after the new one is whole).
        use_mask: compute a foreground mask (background -1, scaling fitted inside it). Without
            it every voxel is foreground, so ``min_foreground`` keeps every slice.
        bias_correction: the bias-field correction of every volume of both sites, stored in
            the manifest (and so in every checkpoint trained on the cache, which harmonize
            applies); default N4 for MRI and none for OCT; ``BiasCorrection(method="none")``
            for already-corrected data.
        modality: ``"mri"`` or ``"oct"``: OCT images are resampled with nearest neighbour,
            masked to the retina and scaled as whole B-scans (the background kept), never
            bias-corrected (:class:`~segrenorm.data.slicing.SliceRecipe`); recorded in the
            manifest.
        auto_labels: pseudo-labels for the sites without label maps (every subject of a site
            has one, or none has): ``"gmm"``, a :class:`~segrenorm.data.autolabels.PseudoLabeller`
            (``segnet``: :func:`segrenorm.workflows.autolabel.auto_labeller`), or None, which
            refuses unlabelled sites beside labelled ones (``segrenorm.data.autolabels``).
        progress: show a progress bar.

    Returns:
        The cache folder.

    Raises:
        InputError: for unusable records or volumes; CacheError if ``out_dir`` exists and
            ``overwrite`` is False or it is not a cache; ConfigError for bad options, an
            unknown ``target``, or more than two sites without ``target`` or ``spacing``.
            InputError also when a site has too few subjects for the fractions.
    """
    if bias_correction is None:
        bias_correction = NO_BIAS_CORRECTION if modality == "oct" else DEFAULT_BIAS_CORRECTION
    recipe = SliceRecipe(
        axis=slice_axis,
        spacing=spacing,
        percentiles=(lower_pct, upper_pct),
        headroom=headroom,
        use_mask=use_mask,
        pad_multiple=pad_multiple,
        bias=bias_correction,
        modality=modality,
    )
    loso = n_folds == LOSO
    n_folds = 1 if loso else n_folds
    if not isinstance(n_folds, int):
        raise ConfigError(f"n_folds {n_folds!r} must be a number of folds or {LOSO!r}")
    _check_options(min_foreground, test_fraction, val_fraction, n_folds, n_classes)
    if not records:
        raise InputError("no subjects to prepare: the listing is empty")
    if class_names is not None:
        if n_classes is not None and len(class_names) != n_classes:
            raise ConfigError(
                f"{len(class_names)} class names {list(class_names)} given for {n_classes} classes"
            )
        n_classes = len(class_names)  # io then refuses label values beyond the named classes
    site_names = site_order(records, sites)
    check_distinct(records)
    by_site = [[r for r in records if r.site == name] for name in site_names]
    for name, group in zip(site_names, by_site, strict=True):
        dupes = sorted({r.subject for r in group if sum(s.subject == r.subject for s in group) > 1})
        if dupes:
            raise InputError(f"site {name!r} lists subject(s) {dupes} more than once")
    plan = plan_auto_labels(
        site_names, by_site, auto_labels, n_classes=n_classes, class_names=class_names,
        use_mask=use_mask,
    )  # fmt: skip
    has_labels, n_classes, class_names = plan.has_labels, plan.n_classes, plan.class_names
    out = Path(out_dir).expanduser().absolute()
    if out.exists():
        if not overwrite:
            raise CacheError(f"{out} already exists; pass overwrite (--overwrite) to replace it")
        if not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").exists()):
            raise CacheError(
                f"{out} exists and is not a slice cache (no manifest.json); refusing to replace "
                "it: choose another output folder"
            )
    if not out.parent.is_dir():
        raise InputError(f"the folder {out.parent} for cache {out.name} does not exist")
    grid = choose_grid(
        records, site_names, spacing=spacing, target=target, spacing_of=recipe.grid_spacing
    )
    recipe = dataclasses.replace(recipe, spacing=grid.spacing)

    ordered = [record for group in by_site for record in group]
    splits = [
        pair
        for i, group in enumerate(by_site)
        for pair in assign_splits(group, test_fraction, n_folds, seed, i, val_fraction)
    ]
    if loso:  # the splits as drawn, the folds one per person
        folds, n_folds = loso_folds(by_site)
        splits = [(split, fold) for (split, _), fold in zip(splits, folds, strict=True)]
    remove_stale_temporaries(out.parent)  # partial caches of killed runs: never read again
    tmp = temporary_dir(out)
    try:
        work = tmp / "_work"
        work.mkdir(parents=True)
        infos: list[dict[str, Any]] = [{} for _ in ordered]
        keys = site_keys(len(site_names))
        # Labelled subjects first (cache order if all are): the pseudo-labeller learns from them.
        order = sorted(range(len(ordered)), key=lambda i: ordered[i].label is None)
        for index in tqdm(order, desc="prepare", unit="subject", disable=not progress):
            record = ordered[index]
            if record.label is None:  # fits the labeller once, on the labelled subjects' slices
                plan.fit(work, ordered, splits, infos, site_names=site_names, keys=keys)
            infos[index] = _process_subject(
                record,
                work,
                index,
                recipe=recipe,
                n_classes=n_classes,
                min_foreground=min_foreground,
                labeller=plan.labeller,
                pseudo_name=pseudo_label_name(keys[site_names.index(record.site)], record.subject),
            )
        max_label = max(info["max_label"] for info in infos)
        if n_classes is None:
            n_classes = max(max_label + 1, 2) if has_labels else 1
        names = (
            list(class_names)
            if class_names is not None
            else (["background"] + [f"class_{k}" for k in range(1, n_classes)])
        )
        slice_shape = recipe.slice_shape(info["plane"] for info in infos)
        subjects = []
        starts = np.cumsum([0] + [len(group) for group in by_site]).tolist()
        for key, name, group_start, group in zip(keys, site_names, starts, by_site, strict=False):
            rows = list(range(group_start, group_start + len(group)))
            n_rows = sum(infos[i]["n_slices"] for i in rows)
            if n_rows == 0:
                raise InputError(
                    f"site {name!r}: no slice has "
                    f"{min_foreground:.0%} foreground; lower min_foreground (--min-foreground)"
                )
            _assemble(tmp / key, work, rows, n_rows, slice_shape)
            first_row = 0
            for i in rows:
                record, info = ordered[i], infos[i]
                subjects.append(
                    {
                        "subject": record.subject,
                        "site": key,
                        "image": str(record.image),
                        "label": info["label"],
                        "label_source": info["label_source"],
                        "clean": None if record.clean is None else str(record.clean),
                        "split": splits[i][0],
                        "fold": splits[i][1],
                        "scaling": info["scaling"],
                        "shape": info["shape"],
                        "spacing": info["spacing"],
                        "original_spacing": info["original_spacing"],
                        "n_slices": info["n_slices"],
                        "first_row": first_row,
                    }
                )
                first_row += info["n_slices"]
        shutil.rmtree(work)
        clipped = {
            name: np.sum([infos[i]["clipped"] for i in range(first, first + len(group))], axis=0)
            for name, first, group in zip(site_names, starts, by_site, strict=False)
        }
        for message in clipping_warnings(
            clipped, names, upper_pct=upper_pct, headroom=recipe.headroom
        ):
            logger.warning(message)
        manifest = {
            "format_version": FORMAT_VERSION,
            "complete": True,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "segrenorm_version": __version__,
            "sites": dict(zip(keys, site_names, strict=True)),
            "n_classes": n_classes,
            "class_names": names,
            "has_labels": has_labels,
            "auto_labels": plan.manifest_entry(keys),
            "slice_axis": slice_axis,
            "canonical_orientation": "stored" if recipe.is_oct else "RAS",  # OCT: voxel order
            "spacing": list(grid.spacing),
            "grid": grid.to_dict(),
            "slice_shape": list(slice_shape),
            "pad_multiple": pad_multiple,
            "percentiles": [lower_pct, upper_pct],
            "headroom": recipe.headroom,
            "min_foreground": min_foreground,
            "use_mask": use_mask,
            "bias_correction": bias_correction.to_dict(),
            "modality": modality,
            "split": {
                "seed": seed,
                "test_fraction": test_fraction,
                "val_fraction": val_fraction,
                "n_folds": n_folds,
                **({"folds": LOSO} if loso else {}),
            },
            "subjects": subjects,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir(tmp, out)  # an old cache is replaced only now that the new one is whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
