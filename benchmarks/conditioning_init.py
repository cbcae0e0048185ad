"""The semantic embedding at initialisation: its rms and its spread across images, old vs new.

For the ``cpu`` and ``ixi`` presets this builds untrained translators twice: with today's
initialisation (He/Kaiming extractor, centred input, standardised embedding, FiLM heads of
std ``model.film_init_std``) and with the one before issue 10, rebuilt through the config
flags (``model.extractor_init=normal``, ``model.embed_norm=false``,
``model.film_init_std=0``). It embeds axial slices of the MNI152 2 mm template shipped with
nilearn (the anatomy of the built-in benchmark) two ways:

- ``route``: ``f(softmax(S(x)))``, what the generator G gets at step 0 (x: the template's T1
  scaled to [-1, 1] by its 0.5 / 99.5 brain percentiles, background -1);
- ``labels``: ``f(one-hot(labels))``, the tissue labels (CSF, GM, WM) themselves.

and prints, over the slices and ``--seeds`` initialisations: ``rms`` = sqrt(mean f²) and
``spread`` = the standard deviation across slices, averaged over the embedding dimensions
(``relative`` = spread / rms). It also prints ``|gamma|``, the mean |gamma| of the first
renorm layer of G for those embeddings. Takes about 40 s on 2 CPU cores.

Usage:
    .venv/bin/python benchmarks/conditioning_init.py [--seeds 3] [--presets cpu ixi]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
import torch.nn.functional as F

from segrenorm.config.load import load_config
from segrenorm.models.nn.renorm import SegRenorm
from segrenorm.models.translator import Translator
from segrenorm.simulate.anatomy import load_mni152_anatomy, tissue_labels

OLD_FLAGS = ["model.extractor_init=normal", "model.embed_norm=false", "model.film_init_std=0"]
#: Axial slice positions of the 2 mm template (95 slices) that hold brain.
SLICES = range(25, 75, 5)


def _pad(a: np.ndarray, multiple: int, value: float) -> np.ndarray:
    """Pad the last two axes symmetrically to multiples of ``multiple``."""
    pads = [(0, 0)] * (a.ndim - 2)
    for n in a.shape[-2:]:
        extra = -n % multiple
        pads.append((extra // 2, extra - extra // 2))
    return np.pad(a, pads, constant_values=value)


def _slices() -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) T1 slices in [-1, 1] and (N, 4, H, W) one-hot tissue labels."""
    from nilearn import datasets

    labels = tissue_labels(load_mni152_anatomy(2))  # (X, Y, Z) 0 bg, 1 CSF, 2 GM, 3 WM
    t1 = np.asarray(datasets.load_mni152_template(resolution=2).get_fdata(), np.float32)
    low, high = np.percentile(t1[labels > 0], [0.5, 99.5])
    t1 = np.where(labels > 0, np.clip((t1 - low) / (high - low), 0, 1) * 2 - 1, -1.0)
    images = _pad(np.stack([t1[:, :, z] for z in SLICES]), 16, -1.0)
    onehot = _pad(np.stack([labels[:, :, z] for z in SLICES]), 16, 0)
    x = torch.from_numpy(images.astype(np.float32))[:, None]
    return x, F.one_hot(torch.from_numpy(onehot).long(), 4).permute(0, 3, 1, 2).float()


def _stats(emb: torch.Tensor) -> tuple[float, float]:
    return float(emb.pow(2).mean().sqrt()), float(emb.std(dim=0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="initialisations averaged over")
    parser.add_argument("--presets", nargs="+", default=["cpu", "ixi"])
    args = parser.parse_args()
    x, onehot = _slices()
    print(f"{len(SLICES)} axial MNI152 slices, {tuple(x.shape[-2:])} padded; mean over "
          f"{args.seeds} seeds")  # fmt: skip
    print(f"{'preset':7} {'init':4} {'input':7} {'rms':>9} {'spread':>9} {'relative':>9} "
          f"{'|gamma|':>9}")  # fmt: skip
    for preset in args.presets:
        for init, flags in (("old", OLD_FLAGS), ("new", [])):
            config = load_config(preset, overrides=flags)
            rows: dict[str, list[tuple[float, float, float]]] = {"route": [], "labels": []}
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                model = Translator.from_config(config).eval()
                assert model.seg_a is not None and model.extractor_ab is not None
                first = next(m for m in model.gen_ab.modules() if isinstance(m, SegRenorm))
                with torch.no_grad():
                    for name, emb in (
                        ("route", model.embed(model.extractor_ab, model.seg_a(x))),
                        ("labels", model.extractor_ab(onehot)),
                    ):
                        assert emb is not None
                        rms, spread = _stats(emb)
                        rows[name].append((rms, spread, float(first.gamma(emb).abs().mean())))
            for name, values in rows.items():
                rms, spread, gamma = (statistics.mean(v) for v in zip(*values, strict=True))
                print(f"{preset:7} {init:4} {name:7} {rms:9.3g} {spread:9.3g} "
                      f"{spread / rms:9.3g} {gamma:9.3g}")  # fmt: skip


if __name__ == "__main__":
    main()
