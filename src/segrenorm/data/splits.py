"""Subject-level train/val/test splits and cross-validation folds of one site.

:func:`assign_splits` draws them for :func:`segrenorm.data.prepare.prepare_cache`, per site and
per person: the records of one :attr:`~segrenorm.data.listing.SubjectRecord.group` (the
sessions of one BIDS participant) share a split and a fold, so one person's anatomy is never
in training and testing at once.

Example:
    >>> from pathlib import Path
    >>> from segrenorm.data.listing import SubjectRecord
    >>> records = [SubjectRecord(f"s{k}", "A", Path(f"{k}.nii"), None) for k in range(4)]
    >>> sorted(split for split, _ in assign_splits(records, 0.3, 2, 0, 0, 0.15))
    ['test', 'train', 'train', 'val']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segrenorm.data.listing import SubjectRecord
from segrenorm.errors import InputError

__all__ = ["assign_splits"]


def _round_half_up(value: float) -> int:
    return int(np.floor(value + 0.5))


def _groups(records: Sequence[SubjectRecord]) -> dict[str, list[int]]:
    """Record indices per group (a record without one is its own group), sorted by group id."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(record.group or record.subject, []).append(i)
    return dict(sorted(groups.items()))


def _listed_split(records: Sequence[SubjectRecord], group: str, members: list[int]) -> str | None:
    """The split listed for a group's records (one at most), or None if none is listed."""
    listed = sorted({s for i in members if (s := records[i].split) is not None})
    if len(listed) > 1:
        names = ", ".join(f"{records[i].subject} ({records[i].split})" for i in members)
        raise InputError(
            f"the records of {group!r} are listed in different splits: {names}; one person's "
            "records must share a split: list the same split for all of them or leave it empty"
        )
    return listed[0] if listed else None


def assign_splits(
    records: Sequence[SubjectRecord],
    test_fraction: float,
    n_folds: int,
    seed: int,
    site_idx: int,
    val_fraction: float = 0.0,
) -> list[tuple[str, int]]:
    """(split, fold) per record of one site; deterministic in the seed and the subject ids.

    Splits and folds are drawn per group (:attr:`SubjectRecord.group`, else per subject), so
    every record of one person gets the same split and fold. A group's listed ``split`` wins
    for all its records and the fractions apply only to the other ("free") groups. These are
    sorted by id and shuffled with ``seed``; the first ``round(test_fraction * n_free)``
    (rounded half up, leaving at least one free group for training) are test and the next
    ``round(val_fraction * n_free)`` are val, so the test subjects and the folds do not depend
    on ``val_fraction``. A fraction above 0 must give its split at least one subject (listed
    or drawn); a site whose subjects all have a listed split is exempt. Every record gets a
    fold ``0..n_folds-1``.

    Args:
        records: the subjects of one site.
        test_fraction: fraction of the subjects without a split to draw as test.
        n_folds: number of cross-validation folds.
        seed: seed of the draws.
        site_idx: the site's index in cache order (0, 1, ...), so that sites draw differently.
        val_fraction: fraction of the subjects without a split to draw as val.

    Raises:
        InputError: if the drawn val subjects would leave the site without a training
            subject, a fraction above 0 gives its split no subject at the site (the message
            names the site and the empty split and says how to change the fractions), or one
            group's records are listed in different splits.
    """
    groups = _groups(records)
    order = list(groups)
    listed = {g: _listed_split(records, g, members) for g, members in groups.items()}
    rng = np.random.default_rng([seed, site_idx])
    free = [g for g in order if listed[g] is None]
    shuffled = [free[j] for j in rng.permutation(len(free))]
    n_test = _round_half_up(test_fraction * len(free))
    n_test = min(n_test, max(len(free) - 1, 0))  # keep at least one drawn training subject
    n_val = _round_half_up(val_fraction * len(free))
    n_listed_train = sum(split == "train" for split in listed.values())
    site = records[0].site if records else "?"
    if n_val > 0 and n_test + n_val >= len(free) and n_listed_train == 0:
        raise InputError(
            f"site {site!r} has {len(free)} subject(s) without a listed split: drawing "
            f"{n_test} test (test_fraction {test_fraction}) and {n_val} val (val_fraction "
            f"{val_fraction}) would leave the train split empty; lower the val fraction "
            "(--val-fraction, 0 for no val split) or the test fraction (--test-fraction), "
            "or add subjects to the site"
        )
    n_val = min(n_val, len(free) - n_test)
    if free:
        requested = {"test": (test_fraction, n_test), "val": (val_fraction, n_val)}
        _check_not_empty(set(listed.values()), site, len(free), n_listed_train, requested)
    drawn = {g: "test" for g in shuffled[:n_test]}
    drawn.update({g: "val" for g in shuffled[n_test : n_test + n_val]})
    folds = rng.permutation(len(order))
    result: list[tuple[str, int]] = [("train", 0)] * len(records)
    for position, group in enumerate(order):
        split = listed[group] or drawn.get(group, "train")
        for i in groups[group]:
            result[i] = (split, int(folds[position] % n_folds))
    return result


def _check_not_empty(
    listed: set[str | None],
    site: str,
    n_free: int,
    n_listed_train: int,
    drawn: dict[str, tuple[float, int]],
) -> None:
    """Refuse a requested split (fraction > 0) that neither the listing nor the draw fills."""
    empty = [
        (split, fraction)
        for split, (fraction, n_drawn) in drawn.items()
        if fraction > 0 and n_drawn == 0 and split not in listed
    ]
    if not empty:
        return
    what = " and ".join(f"{s} split (--{s}-fraction {f})" for s, f in empty)
    names = " and ".join(s for s, _ in empty)
    fixes = ", ".join(f"--{s}-fraction 0 for no {s} split" for s, _ in empty)
    # One free subject must train (test is drawn from the others; val too without a listed
    # training subject), so no fraction can fill the split: raising it would not help.
    if n_free == 1 and any(s == "test" or n_listed_train == 0 for s, _ in empty):
        raise InputError(
            f"site {site!r} has only one subject without a listed split: it must train, so "
            f"the requested {what} would be empty at this site. Add subjects to the site, "
            f"pass {fixes}, or list each subject's split in a CSV 'split' column (--csv)"
        )
    raise InputError(
        f"site {site!r} has {n_free} subject(s) without a listed split, too few for the "
        f"requested {what}: it rounds to 0 subjects, so the {names} split would be empty at "
        f"this site. Add subjects to the site, raise the fraction, pass {fixes}, or list each "
        "subject's split in a CSV 'split' column (--csv)"
    )
