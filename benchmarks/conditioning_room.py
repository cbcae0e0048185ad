"""How much an image-dependent or segmentation-aware intensity map could add on a benchmark.

segrenorm conditions its generator on one embedding per slice (FiLM), so what it can add to
an unconditioned translator is a map that differs from slice to slice. On the paired
held-out slices of a simulated benchmark (the same subject and slice on both scanners) this
script fits ``target ~ polynomial(source)`` of a given degree inside both foregrounds, three
ways, and prints each fit's mean absolute error (the [-1, 1] scale) pooled over the pixels:

- ``identity``: no map;
- ``global``: one map for every slice (what an unconditioned translator can do per pixel
  value);
- ``per-slice``: one map per slice (the room a per-image embedding opens);
- ``per-class``: one map per class of the source label map, shared by the slices (the room
  a spatial, segmentation-aware modulation opens, with the true labels: an oracle).

and the same errors inside each class (``--classes`` prints them). Against the target scan
(the default) its pixel noise is in every row alike, and no intensity map removes it;
``--clean`` scores against the noise-free, bias-free target render instead. The per-class
fit knows the true labels, so it also predicts a class's mean where the source is noisy: an
upper bound on what a segmentation-aware map could do, not an estimate of it.

Usage:
    .venv/bin/python benchmarks/conditioning_room.py --cache CACHE --source SA --target SV \
        [--split val] [--degrees 1 3] [--min-pixels 200] [--classes] [--clean]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

FITS = ("identity", "global", "per-slice", "per-class")


def _fit(x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    """The least-squares polynomial of ``y`` on ``x``, evaluated at ``x``.

    ``Polynomial.fit`` maps ``x``'s range onto [-1, 1] first, so that high degrees on the
    narrow range of one slice stay well conditioned.
    """
    return np.polynomial.Polynomial.fit(x, y, degree)(x)


def fit_errors(
    xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    classes: Sequence[np.ndarray],
    degree: int,
) -> dict[str, dict[str, float]]:
    """Mean absolute error of each fit, over all pixels and inside each class.

    Args:
        xs: per slice, the source pixels (1-D, inside both foregrounds).
        ys: per slice, the paired target pixels, in the same order.
        classes: per slice, the source label of each pixel.
        degree: the polynomial's degree.

    Returns:
        ``{fit: {"all": e, "class <k>": e, ...}}`` for each fit of :data:`FITS`.

    Raises:
        ValueError: no slices, unequal lengths, or a slice with no more pixels than
            ``degree + 1`` (its own fit would be exact and say nothing).
    """
    if not xs or not (len(xs) == len(ys) == len(classes)):
        raise ValueError("fit_errors needs one x, y and class array per slice, at least one")
    for x, y, c in zip(xs, ys, classes, strict=True):
        if not (x.shape == y.shape == c.shape) or x.size <= degree + 1:
            raise ValueError(f"a slice has {x.size} pixels, or unequal arrays; need more than "
                             f"{degree + 1} paired pixels per slice")  # fmt: skip
    x_all, y_all, c_all = (np.concatenate(a).astype(np.float64) for a in (xs, ys, classes))
    pieces = [_fit(x.astype(np.float64), y.astype(np.float64), degree)
              for x, y in zip(xs, ys, strict=True)]  # fmt: skip
    predicted = {
        "identity": x_all,
        "global": _fit(x_all, y_all, degree),
        "per-slice": np.concatenate(pieces),
    }
    regions = {int(label): c_all == label for label in np.unique(c_all)}
    per_class = predicted["global"].copy()
    for inside in regions.values():
        if inside.sum() > degree + 1:  # a rarer class keeps the global map
            per_class[inside] = _fit(x_all[inside], y_all[inside], degree)
    predicted["per-class"] = per_class
    out: dict[str, dict[str, float]] = {}
    for name in FITS:
        error = np.abs(y_all - predicted[name])
        out[name] = {"all": float(error.mean())}
        for label, inside in regions.items():
            out[name][f"class {label}"] = float(error[inside].mean())
    return out


def paired_pixels(
    cache: str, source: str, target: str, split: str, min_pixels: int, *, clean: bool = False
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[str]]:
    """Per paired slice with at least ``min_pixels`` shared foreground pixels: x, y, labels.

    ``y`` is the target scan, or with ``clean`` its noise-free, bias-free render (slices of
    subjects without one are left out).
    """
    from segrenorm.data.slice_cache import SliceCache
    from segrenorm.evaluate.data import EvalData
    from segrenorm.evaluate.paired import clean_target_slices
    from segrenorm.workflows.pairs import EVALUATE_CHOICE

    opened = SliceCache.open(cache, pair=(source, target), how_to_choose=EVALUATE_CHOICE)
    data = EvalData.from_cache(opened, split=split)
    targets, present = data.target.images, np.ones(len(data.target.images), bool)
    if clean:
        found = clean_target_slices(data)
        if found is None:
            raise SystemExit(f"conditioning_room: {cache} records no clean target renders")
        targets, present = found
    xs, ys, cs = [], [], []
    for a, b in zip(*data.paired_rows(), strict=True):
        inside = data.source.masks[a] & data.target.masks[b]
        if present[b] and inside.sum() >= min_pixels:
            xs.append(data.source.images[a][inside])
            ys.append(targets[b][inside])
            cs.append(data.source.labels[a][inside])
    return xs, ys, cs, list(data.class_names)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the fits' errors (see the module docstring); returns 0."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="a prepared cache with paired subjects")
    parser.add_argument("--source", required=True, help="the source site's name or key")
    parser.add_argument("--target", required=True, help="the target site's name or key")
    parser.add_argument("--split", default="val", choices=("val", "test"), help="default val")
    parser.add_argument(
        "--degrees",
        type=int,
        nargs="+",
        default=[1, 3],
        help="polynomial degrees, one table each (default 1 3)",
    )
    parser.add_argument(
        "--min-pixels",
        type=int,
        default=200,
        help="leave out paired slices with fewer shared foreground pixels",
    )
    parser.add_argument("--classes", action="store_true", help="the errors inside each class")
    parser.add_argument("--clean", action="store_true", help="against the clean target render")
    args = parser.parse_args(argv)
    xs, ys, cs, names = paired_pixels(args.cache, args.source, args.target, args.split,
                                      args.min_pixels, clean=args.clean)  # fmt: skip
    if not xs:
        raise SystemExit(f"conditioning_room: {args.cache} has no paired {args.split} "
                         f"slices of {args.source} and {args.target} with "
                         f"{args.min_pixels} pixels")  # fmt: skip
    truth = "clean target render" if args.clean else "target scan"
    print(f"{args.source} -> {args.target} ({truth}), {args.split}: {len(xs)} paired slices, "
          f"{sum(x.size for x in xs)} pixels")  # fmt: skip
    for degree in args.degrees:
        errors = fit_errors(xs, ys, cs, degree)
        keys = ["all"] + ([k for k in errors["identity"] if k != "all"] if args.classes else [])
        heads = [k if k == "all" else names[int(k.split()[1])] for k in keys]
        print(f"\ndegree {degree}: mean |target - map(source)|")
        print(f"{'fit':12s}" + "".join(f"{h:>12s}" for h in heads))
        for fit in FITS:
            print(f"{fit:12s}" + "".join(f"{errors[fit][k]:12.4f}" for k in keys))
        gained = errors["identity"]["all"] - errors["global"]["all"]
        extra = errors["global"]["all"] - errors["per-slice"]["all"]
        print(f"per-slice over global: {extra:.4f}, against {gained:.4f} for global over identity")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
