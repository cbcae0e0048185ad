"""Training vs inference: the paired scores of runs translated whole or in tiles.

Issue 10 item 2. A run trained on crops (the ``cpu`` preset: 64x64) can translate a whole
padded slice (``--tiles none``) -- other instance-norm statistics and another segmentation
embedding than in training -- or overlapping tiles of its crop size blended by a Gaussian
window (``--tiles auto``, what ``harmonize`` and ``evaluate`` do by default). A run trained on
whole slices (``data.crop_size=0``) has one way. This prints, per run and rule, paired SSIM
and PSNR against the noisy target scan and against the clean target render, inside the
label-defined brain, on the held-out ``--split`` (val: this is where the rule is chosen),
beside the strongest classical pipeline (N4 + denoise + histogram matching) on the same
slices. Mean ± std over subjects, as in the report.

Usage:
    .venv/bin/python benchmarks/inference_rule.py --cache CACHE --split val \
        --run crops=RUN_DIR --run whole=RUN_DIR [--tiles auto none]
"""

from __future__ import annotations

import argparse
import typing
from typing import Any

import torch

from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.methods import baseline_slices, translator_slices
from segrenorm.evaluate.paired import paired_scores
from segrenorm.models.checkpoint import load_translator
from segrenorm.models.tiling import inference_tile, tiled_translation

CLASSICAL = "n4-denoise-histogram"


def _row(name: str, scores: dict[str, Any]) -> str:
    noisy, clean = scores, scores.get("clean") or {}
    cells = [f"{noisy['ssim']:.4f} ± {noisy['ssim_std']:.4f}", f"{noisy['psnr']:.2f}"]
    if clean:
        cells += [f"{clean['ssim']:.4f} ± {clean['ssim_std']:.4f}", f"{clean['psnr']:.2f}"]
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR")
    parser.add_argument("--tiles", nargs="+", default=["auto", "none"])
    args = parser.parse_args()
    torch.manual_seed(0)
    data = EvalData.from_cache(args.cache, split=args.split)
    slices = dict(baseline_slices(data, ["none", CLASSICAL]))
    for item in args.run:
        name, _, path = item.partition("=")
        translator, config = load_translator(path, "cpu")
        stacks = data.source_stacks(translator.context_slices)

        def translate(x: torch.Tensor, model: Any = translator) -> torch.Tensor:
            return typing.cast(torch.Tensor, model.translate(x, "AB"))

        for choice in args.tiles:
            tile = inference_tile(config, data.cache.slice_shape, choice)
            key = f"{name}, tiles {choice} ({tile or 'whole'})"
            if any(k.endswith(f"({tile or 'whole'})") and k.startswith(name) for k in slices):
                continue  # a run trained on whole slices: auto and none are the same
            fn = tiled_translation(translate, tile, stride=translator.stride)
            slices[key] = translator_slices(fn, stacks, data.source.masks)
    scores = paired_scores(data, slices)
    assert scores is not None, "the cache has no subject on both sites"
    print(f"{args.cache}, {args.split} split: {scores['n_subjects']} subjects")
    print("| method | SSIM noisy | PSNR noisy | SSIM clean | PSNR clean |")
    print("|---|---|---|---|---|")
    for name, row in scores["methods"].items():
        print(_row(name, row))


if __name__ == "__main__":
    main()
