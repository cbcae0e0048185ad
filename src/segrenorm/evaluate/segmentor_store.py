"""A folder of trained post-hoc segmentors, reused by later evaluations of the same data.

The segmentation lens trains, per segmentor seed, one segmentor on each site's training
slices. Those depend only on the slices, their labels, the class count and the segmentor's
settings, not on the methods scored or the split: the validation run and the final test run
of a study, or the three directions of a three-site cache (each site is a source in one and a
target in another), train the same nets again. With ``evaluate --segmentors DIR`` each net is
stored in DIR under a key computed from exactly those inputs, and an evaluation that needs the
same net loads it instead of training it.

The key is the SHA-256 of the training slices' and labels' bytes, shapes and dtypes, the class
count, every :class:`~segrenorm.evaluate.segmentors.SegmentorConfig` field (automatic ones
filled in, seed included), the store's format and the segrenorm and torch versions. Anything
else that would change the net changes the key, so a stale net is never reused; what the key
cannot see is the thread count and the device a net was trained with (training is
deterministic for a given seed on one device and thread count): a reused net is the one
trained the first time, and figures may differ in the last bits from a fresh training on other
hardware.

A file is ``<key[:24]>.pt``, written atomically and read with ``torch.load(weights_only=True)``:

    {format, key, n_classes, ngf, depth, in_channels, config, state_dict}

Example:
    >>> store = SegmentorStore("segmentors")  # doctest: +SKIP
    >>> net, reused = store.get(images, labels, 2, config)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segrenorm._version import __version__
from segrenorm.atomic import atomic_path
from segrenorm.errors import CheckpointError, InputError
from segrenorm.evaluate.segmentors import SegmentorConfig, train_segmentor
from segrenorm.models.checkpoint import read_tensor_file
from segrenorm.models.nn.segnet import SegUNet

__all__ = ["STORE_FORMAT", "SegmentorStore", "segmentor_key"]

#: Version of the stored file's layout; part of the key.
STORE_FORMAT = 1
#: Hex digits of the key in the file name.
NAME_DIGITS = 24
Trainer = Callable[[np.ndarray, np.ndarray, int, SegmentorConfig], SegUNet]


def _digest_array(hasher: Any, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    hasher.update(f"{array.dtype.str}{array.shape}".encode())
    hasher.update(array.data.cast("B"))


def segmentor_key(
    images: np.ndarray, labels: np.ndarray, n_classes: int, config: SegmentorConfig
) -> str:
    """The hex SHA-256 naming the segmentor these inputs train (see the module docstring).

    Args:
        images: the training slices.
        labels: their label maps.
        n_classes: classes, background included.
        config: the segmentor's settings, automatic ones already resolved.
    """
    hasher = hashlib.sha256()
    facts = {
        "format": STORE_FORMAT,
        "segrenorm": __version__,
        "torch": torch.__version__,
        "n_classes": int(n_classes),
        "config": dataclasses.asdict(config),
    }
    hasher.update(json.dumps(facts, sort_keys=True).encode())
    _digest_array(hasher, images)
    _digest_array(hasher, labels)
    return hasher.hexdigest()


class SegmentorStore:
    """Trained segmentors in a folder, by the key of what trained them.

    Args:
        folder: where the ``.pt`` files live; created on the first store.
        train: how a missing net is trained (default :func:`train_segmentor`).

    Raises:
        InputError: ``folder`` exists and is not a folder.
    """

    def __init__(self, folder: str | Path, *, train: Trainer = train_segmentor) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(
                f"segmentor store {self.folder} is a file, not a folder: give a folder (it is "
                "created if missing)."
            )
        self._train = train
        #: Per :meth:`get` call, in order: ``(file name, True if loaded, False if trained)``.
        self.log: list[tuple[str, bool]] = []

    def path(self, key: str) -> Path:
        """The file of the net with this key."""
        return self.folder / f"{key[:NAME_DIGITS]}.pt"

    def get(
        self, images: np.ndarray, labels: np.ndarray, n_classes: int, config: SegmentorConfig
    ) -> tuple[SegUNet, bool]:
        """The net these inputs train: loaded when stored, else trained and stored.

        Args:
            images: the training slices, as :func:`train_segmentor` takes them.
            labels: their label maps.
            n_classes: classes, background included.
            config: the segmentor's settings, automatic ones already resolved.

        Returns:
            ``(net in eval mode, True when it was loaded rather than trained)``.

        Raises:
            CheckpointError: the stored file is damaged, foreign, or holds another key.
        """
        key = segmentor_key(images, labels, n_classes, config)
        file = self.path(key)
        if file.is_file():
            net = self._load(file, key)
            self.log.append((file.name, True))
            return net, True
        net = self._train(images, labels, n_classes, config)
        self._save(net, file, key, config)
        self.log.append((file.name, False))
        return net, False

    def _save(self, net: SegUNet, file: Path, key: str, config: SegmentorConfig) -> None:
        payload = {
            "format": STORE_FORMAT,
            "key": key,
            "n_classes": int(net.n_classes),
            "ngf": int(config.ngf),
            "depth": int(net.depth),
            "in_channels": int(net.in_channels),
            "config": json.dumps(dataclasses.asdict(config), sort_keys=True),
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        }
        with atomic_path(file) as tmp:
            torch.save(payload, tmp)

    def _load(self, file: Path, key: str) -> SegUNet:
        remedy = f"delete {file} and evaluate again: the segmentor is then trained anew."
        payload = read_tensor_file(file, map_location="cpu", foreign=remedy, damaged=remedy)
        if not isinstance(payload, dict) or payload.get("format") != STORE_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise CheckpointError(
                f"{file} is not a segmentor of store format {STORE_FORMAT} (found {found!r}); "
                f"{remedy}"
            )
        if payload.get("key") != key:
            raise CheckpointError(
                f"{file} holds the segmentor of other data or settings (key "
                f"{str(payload.get('key'))[:NAME_DIGITS]}..., expected {key[:NAME_DIGITS]}...); "
                f"{remedy}"
            )
        try:
            net = SegUNet(
                n_classes=int(payload["n_classes"]),
                ngf=int(payload["ngf"]),
                depth=int(payload["depth"]),
                in_channels=int(payload["in_channels"]),
            )
            net.load_state_dict(payload["state_dict"], strict=True)
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{file}: its weights do not fit a segmentor ({str(exc).splitlines()[0]}); {remedy}"
            ) from None
        return net.eval()
