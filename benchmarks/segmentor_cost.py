"""What one post-hoc segmentor costs: training it, loading it from a store, segmenting a split.

Usage:
    .venv/bin/python benchmarks/segmentor_cost.py --cache CACHE --source SA --target SV \
        [--split val] [--store DIR]

Prints the seconds to train the source site's seed-0 segmentor (the evaluation's automatic
settings for the cache's classes), to load the same one from ``--store`` (where an earlier
``evaluate --segmentors DIR`` left it), whether the loaded weights equal this training's
bit for bit (not when the store's was trained with another thread count), and the seconds
to segment the split's source slices once.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from segrenorm.data.slice_cache import SliceCache
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.segmentor_store import SegmentorStore
from segrenorm.evaluate.segmentors import SegmentorConfig, predict_labels, train_segmentor
from segrenorm.workflows.pairs import EVALUATE_CHOICE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--store", help="an evaluate --segmentors folder")
    args = parser.parse_args()
    pair = (args.source, args.target)
    cache = SliceCache.open(args.cache, pair=pair, how_to_choose=EVALUATE_CHOICE)
    data = EvalData.from_cache(cache, split=args.split)
    config = dataclasses.replace(SegmentorConfig().resolved(data.class_names), seed=0)
    images, labels = data.train_slices("source")
    print(f"torch threads {torch.get_num_threads()}, training slices {images.shape}, "
          f"{config.steps} steps")  # fmt: skip
    start = time.perf_counter()
    net = train_segmentor(images, labels, data.n_classes, config)
    print(f"train: {time.perf_counter() - start:.1f} s")
    if args.store:
        start = time.perf_counter()
        loaded, found = SegmentorStore(args.store).get(images, labels, data.n_classes, config)
        seconds = time.perf_counter() - start
        pairs = zip(net.state_dict().values(), loaded.state_dict().values(), strict=True)
        same = all(torch.equal(a, b) for a, b in pairs)
        print(f"store: {seconds:.2f} s (loaded: {found}; bit-equal to this training: {same})")
    start = time.perf_counter()
    predict_labels(net, data.source.images)
    print(f"segment {len(data.source.images)} {args.split} slices: "
          f"{time.perf_counter() - start:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
