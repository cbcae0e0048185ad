"""Which sites get pseudo-labels, and from what: the plan of ``prepare --auto-labels``.

:func:`plan_auto_labels` checks, before ``prepare`` writes anything, that every site is
labelled or unlabelled as a whole and that the pseudo-labelling choice fits the study; the
returned :class:`AutoLabelPlan` fits the labeller on the reference site's training slices and
writes the manifest's ``auto_labels``. The labellers and the pseudo-label files are
:mod:`segrenorm.data.autolabels`'.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segrenorm.data.autolabels import (
    AUTO_LABEL_METHODS,
    GMM_CLASS_NAMES,
    GMMLabeller,
    PseudoLabeller,
    ReferenceSite,
)
from segrenorm.data.listing import SubjectRecord
from segrenorm.errors import ConfigError, InputError

__all__ = ["AutoLabelPlan", "plan_auto_labels"]

logger = logging.getLogger(__name__)


@dataclass
class AutoLabelPlan:
    """Which sites are labelled, which get pseudo-labels, and by what (see
    :func:`plan_auto_labels`).

    Args:
        labeller: the pseudo-labeller, or None when every site is labelled or none is.
        reference: index (cache order) of the reference site, or None.
        unlabelled: indices of the sites that get pseudo-labels.
        has_labels: whether the cache will have labels.
        n_classes: the classes to use (set for gmm without a labelled site).
        class_names: the class names to use (idem).
    """

    labeller: PseudoLabeller | None
    reference: int | None
    unlabelled: tuple[int, ...]
    has_labels: bool
    n_classes: int | None
    class_names: Sequence[str] | None
    fitted: bool = False

    def fit(
        self,
        work: Path,
        records: Sequence[SubjectRecord],
        splits: Sequence[tuple[str, int]],
        infos: Sequence[dict[str, Any]],
        *,
        site_names: Sequence[str],
        keys: Sequence[str],
    ) -> None:
        """Fit the labeller on the reference site's training slices (prepare's work arrays),
        once: later calls do nothing.

        Args:
            work: prepare's work folder, holding ``{index}_{images,labels,masks}.npy`` of every
                labelled subject processed so far.
            records: the subjects in cache order.
            splits: (split, fold) per subject.
            infos: prepare's per-subject results (``max_label``) of the labelled subjects.
            site_names: site names in cache order.
            keys: site keys in cache order.

        Raises:
            InputError: the reference site has no training subject.
        """
        if self.labeller is None or self.fitted:
            return
        self.fitted = True
        if self.reference is None:
            self.labeller.fit(None)
            return
        name = site_names[self.reference]
        rows = [i for i, r in enumerate(records) if r.site == name and splits[i][0] == "train"]
        if not rows:
            raise InputError(
                f"the labelled site {name!r} has no training subject to learn pseudo-labels "
                "from: lower --test-fraction/--val-fraction or list more subjects"
            )
        labelled = [i for i, r in enumerate(records) if r.label is not None]
        n_classes = self.n_classes or max(max(int(infos[i]["max_label"]) for i in labelled) + 1, 2)
        arrays = {
            part: tuple(np.load(work / f"{i}_{part}.npy") for i in rows)
            for part in ("images", "labels", "masks")
        }
        self.labeller.fit(
            ReferenceSite(name, keys[self.reference], arrays["images"], arrays["labels"],
                          arrays["masks"], n_classes)
        )  # fmt: skip

    def manifest_entry(self, keys: Sequence[str]) -> dict[str, Any] | None:
        """The manifest's top-level ``auto_labels``: null, or the method, its settings, the
        reference site key and the pseudo-labelled site keys."""
        if self.labeller is None:
            return None
        return {
            **self.labeller.settings(),
            "reference_site": None if self.reference is None else keys[self.reference],
            "sites": [keys[i] for i in self.unlabelled],
        }


def plan_auto_labels(
    site_names: Sequence[str],
    by_site: Sequence[Sequence[SubjectRecord]],
    auto_labels: str | PseudoLabeller | None,
    *,
    n_classes: int | None,
    class_names: Sequence[str] | None,
    use_mask: bool,
) -> AutoLabelPlan:
    """Check which sites are labelled and whether the pseudo-labelling choice fits them.

    Args:
        site_names: site names in cache order.
        by_site: each site's subjects.
        auto_labels: None, ``"gmm"``, or a pseudo-labeller object (``segnet`` comes from
            :func:`segrenorm.workflows.autolabel.auto_labeller`).
        n_classes: the classes asked for, or None.
        class_names: the class names asked for, or None.
        use_mask: whether the recipe finds a foreground mask.

    Returns:
        The plan; with no labels anywhere and no ``auto_labels``, a label-free cache.

    Raises:
        InputError: a site with label maps for some subjects only, or unlabelled sites beside
            labelled ones without ``auto_labels``.
        ConfigError: an unknown method, ``"segnet"`` given as a name, ``segnet`` without a
            labelled site, or gmm with other than 4 classes or without a mask.
    """
    labelled: list[int] = []
    unlabelled: list[int] = []
    for index, (name, group) in enumerate(zip(site_names, by_site, strict=True)):
        missing = [r for r in group if r.label is None]
        if missing and len(missing) < len(group):
            raise InputError(
                f"site {name!r} has label maps for some subjects only: subject "
                f"{missing[0].subject!r} ({missing[0].image}) has none. Give every subject of "
                "the site a label map, or none (its labels then come from --auto-labels)"
            )
        (unlabelled if missing else labelled).append(index)
    if isinstance(auto_labels, str):
        if auto_labels == "segnet":
            raise ConfigError(
                "auto_labels='segnet' needs the segmentation network of "
                "segrenorm.workflows.autolabel: pass auto_labels=auto_labeller('segnet')"
            )
        if auto_labels != "gmm":
            raise ConfigError(
                f"unknown auto_labels {auto_labels!r}: choose {', '.join(AUTO_LABEL_METHODS)}"
            )
        auto_labels = GMMLabeller()
    if auto_labels is None:
        if labelled and unlabelled:
            lacking = ", ".join(repr(site_names[i]) for i in unlabelled)
            having = ", ".join(repr(site_names[i]) for i in labelled)
            raise InputError(
                f"site(s) {lacking} have no label maps while {having} do: pass --auto-labels "
                "gmm|segnet to pseudo-label them (auto_labels= in Python), or give their labels"
            )
        return AutoLabelPlan(None, None, (), bool(labelled), n_classes, class_names)
    if not unlabelled:
        logger.warning(
            "every site has label maps: --auto-labels %s is not used", auto_labels.method
        )
        return AutoLabelPlan(None, None, (), True, n_classes, class_names)
    reference = labelled[-1] if labelled else None
    if reference is None and auto_labels.needs_reference:
        raise ConfigError(
            f"--auto-labels {auto_labels.method} learns from a labelled site, and no site has "
            "label maps: give one site's labels, or use --auto-labels gmm"
        )
    if auto_labels.method == "gmm":
        if not use_mask:
            raise ConfigError(
                "--auto-labels gmm classifies tissue inside the foreground mask: drop --no-mask "
                "or use --auto-labels segnet"
            )
        wanted = n_classes if n_classes is not None else (len(class_names) if class_names else None)
        if wanted is not None and wanted != 4:
            raise ConfigError(
                f"--auto-labels gmm gives background + 3 tissue classes, but {wanted} classes are "
                "asked for (--n-classes/--class-names): use --auto-labels segnet for other classes"
            )
        if reference is None:
            n_classes = 4
            class_names = list(class_names) if class_names is not None else list(GMM_CLASS_NAMES)
    return AutoLabelPlan(auto_labels, reference, tuple(unlabelled), True, n_classes, class_names)
