"""Leave-one-subject-out folds: one person held out per site and fold.

``segrenorm prepare --folds loso`` gives every person its own fold at its site
(:func:`loso_folds`), instead of the ``--folds N`` draw of
:func:`~segrenorm.data.splits.assign_splits`. Fold ``K`` then holds out at most one person per
site, and training with ``data.fold=K`` sees every other subject of both sites; ``segrenorm
evaluate --fold K`` scores the held-out ones. A person listed at several sites (a travelling
subject held out for paired evaluation, as ``segrenorm simulate`` writes) gets one fold at all of
them, so no fold trains on a person it tests. The folds are numbered in sorted order: first
the persons at several sites, then each site's other persons by id (fold ``K`` pairs the
``K``-th person of every site); the draw's seed does not enter, since every person is held out
once anyway.

Example:
    >>> from pathlib import Path
    >>> from segrenorm.data.listing import SubjectRecord
    >>> a = [SubjectRecord(s, "A", Path(f"{s}.nii"), None) for s in ("a2", "a1", "p")]
    >>> b = [SubjectRecord(s, "B", Path(f"b{s}.nii"), None) for s in ("b1", "p")]
    >>> loso_folds([a, b])
    ([2, 1, 0, 1, 0], 3)
"""

from __future__ import annotations

from collections.abc import Sequence

from segrenorm.data.listing import SubjectRecord

__all__ = ["LOSO", "loso_folds", "parse_folds"]

#: The ``--folds`` value of leave-one-subject-out.
LOSO = "loso"


def parse_folds(value: str) -> int | str:
    """A ``--folds`` value: a number of folds (>= 1) or :data:`LOSO`.

    Args:
        value: the command-line text.

    Raises:
        ValueError: anything else (argparse turns it into a usage error naming the value).
    """
    if value.strip().lower() == LOSO:
        return LOSO
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def loso_folds(by_site: Sequence[Sequence[SubjectRecord]]) -> tuple[list[int], int]:
    """One fold per person and site; a person at several sites has one fold at all of them.

    Args:
        by_site: each site's records, in cache order.

    Returns:
        ``(folds, n_folds)``: the fold of each record, site after site in the order given, and
        the number of folds (the persons at several sites plus the most persons any site has
        besides them).
    """

    def person(record: SubjectRecord) -> str:
        return record.group or record.subject

    sites_of: dict[str, set[int]] = {}
    for i, records in enumerate(by_site):
        for record in records:
            sites_of.setdefault(person(record), set()).add(i)
    shared = sorted(p for p, sites in sites_of.items() if len(sites) > 1)
    fold_of = {p: k for k, p in enumerate(shared)}
    n_folds = len(shared)
    folds: list[int] = []
    for records in by_site:
        own = sorted({person(r) for r in records} - set(shared))
        local = {p: len(shared) + k for k, p in enumerate(own)}
        n_folds = max(n_folds, len(shared) + len(own))
        folds += [fold_of.get(person(r), local.get(person(r), 0)) for r in records]
    return folds, max(n_folds, 1)
