"""In-domain Dice of the post-hoc segmentors on sparse pocket classes, before and after.

The evaluation's segmentation lens trains small segmentors on one site's training slices
(``segrenorm.evaluate.segmentors``). On caches whose classes are sparse pockets (MS lesions,
retinal fluid) the tissue settings (150 steps, uniform cross-entropy weights) learned to
predict background; :meth:`SegmentorConfig.resolved` now gives such caches 400 steps, the
background weighed 0.05 against 0.95 and half of each batch from labelled slices. This script
trains both on a site's ``train`` slices and scores them on its ``val`` slices (in-domain, the
reference row of the lens), for each seed, and prints the Dice per class:

* ``before``: what the lens used on pocket caches until now (150 steps, uniform weights,
  half-labelled batches);
* ``after``: ``SegmentorConfig().resolved(class names)``.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/pocket_segmentors.py --cache CACHE --site B \
        [--pair A B] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from segrenorm.data.slice_cache import SliceCache
from segrenorm.evaluate.segmentors import SegmentorConfig, predict_labels, train_segmentor
from segrenorm.vocabulary import pocket_classes

BEFORE = SegmentorConfig(iterations=150, labelled_slices=0.5)


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes: Sequence[int]) -> list[float]:
    """Dice of each class over all slices together (NaN where neither has the class)."""
    out = []
    for c in classes:
        a, b = pred == c, truth == c
        total = int(a.sum() + b.sum())
        out.append(float("nan") if total == 0 else 2.0 * float((a & b).sum()) / total)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Train and score the two settings (see the module docstring); prints one line per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="a slice cache with pocket classes")
    parser.add_argument("--site", default="B", help="cache site key whose segmentor is scored")
    parser.add_argument("--pair", nargs=2, metavar=("SRC", "TGT"), help="many-site caches")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cache = SliceCache.open(args.cache, pair=tuple(args.pair) if args.pair else None)
    classes = pocket_classes(cache.class_names)
    if not classes:
        sys.exit(f"{args.cache}: no pocket class in {list(cache.class_names)}")
    train, val = cache.rows(args.site, "train"), cache.rows(args.site, "val")
    images, labels = cache.images(args.site), cache.labels(args.site)
    x, y = np.asarray(images[train]), np.asarray(labels[train])
    xv, yv = np.asarray(images[val]), np.asarray(labels[val])
    share = {cache.class_names[c]: float((y == c).mean()) for c in classes}
    print(f"{args.cache} site {args.site}: {len(train)} train / {len(val)} val slices; "
          f"pocket share of train pixels {share}")  # fmt: skip
    after = SegmentorConfig().resolved(cache.class_names)
    for name, config in (("before", BEFORE), ("after", after)):
        for seed in args.seeds:
            start = time.perf_counter()
            net = train_segmentor(x, y, cache.n_classes, dataclasses.replace(config, seed=seed))
            dice = dice_per_class(predict_labels(net, xv), yv, classes)
            row = {
                "setting": name,
                "seed": seed,
                "seconds": round(time.perf_counter() - start),
                "dice": {
                    cache.class_names[c]: round(d, 3) for c, d in zip(classes, dice, strict=True)
                },
            }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
