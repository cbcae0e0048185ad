"""An endless, resumable, rank-sharded stream of batches over any epoch-aware dataset.

Example:
    >>> stream = infinite_loader(dataset, batch_size=4, seed=1)  # doctest: +SKIP
    >>> batch = next(stream)  # doctest: +SKIP
    >>> state = stream.state_dict()  # store with the checkpoint  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

import torch
from torch.utils.data import DataLoader

from segrenorm.errors import ConfigError

__all__ = ["BatchStream", "EpochDataset", "infinite_loader"]


class EpochDataset(Protocol):
    """What :class:`BatchStream` needs from a dataset."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]: ...

    def set_epoch(self, epoch: int) -> None: ...


class BatchStream(Iterator[dict[str, torch.Tensor]]):
    """An endless, resumable stream of batches, sharded over ranks.

    Epoch ``e`` shuffles the dataset with ``torch.randperm`` under a generator seeded with
    ``seed + e``, truncates to a multiple of ``world_size`` and gives rank ``r`` every
    ``world_size``-th index from ``r`` (as ``DistributedSampler(drop_last=True)`` does, but
    without ``torch.distributed``), so shards are disjoint and all ranks have as many
    batches. Before each epoch it calls ``dataset.set_epoch(e)`` and builds a fresh
    DataLoader, so workers always see the current epoch.

    :meth:`state_dict` records ``(epoch, position)``, the number of batches already yielded
    in the epoch; a stream given that state with :meth:`load_state_dict` yields exactly the
    batch the original stream would have yielded next. With ``num_workers=0`` samples are
    drawn at the dataset's current epoch, so give each stream its own dataset object.

    Args:
        dataset: map-style dataset with ``set_epoch`` (e.g. :class:`UnpairedSliceDataset`).
        batch_size: samples per batch on this rank.
        num_workers: DataLoader worker processes (results do not depend on it).
        seed: non-negative shuffling seed.
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: number of ranks sharing the dataset.
        drop_last: drop each epoch's last incomplete batch.
        pin_memory: passed to the DataLoader.

    Raises:
        ConfigError: a value out of range, or too few samples for one batch per rank.
    """

    def __init__(
        self,
        dataset: EpochDataset,
        *,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1 or num_workers < 0 or seed < 0:
            raise ConfigError(
                f"need batch_size >= 1, num_workers >= 0 and seed >= 0, got batch_size="
                f"{batch_size}, num_workers={num_workers}, seed={seed}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last, self.pin_memory = drop_last, pin_memory
        self.n_samples = len(dataset)
        self.per_rank = self.n_samples // world_size
        full, rest = divmod(self.per_rank, batch_size)
        self.batches_per_epoch = full + (0 if drop_last or rest == 0 else 1)
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"a dataset of {self.n_samples} samples gives each of {world_size} ranks "
                f"{self.per_rank} samples, fewer than batch_size {batch_size}; lower batch_size, "
                "set drop_last=False or give the dataset a larger length"
            )
        self.epoch = 0
        self.position = 0
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Dataset indices of every batch this rank yields in ``epoch``.

        Args:
            epoch: non-negative epoch number.
        """
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        order = torch.randperm(self.n_samples, generator=generator)[
            : self.per_rank * self.world_size
        ]
        mine = order[self.rank :: self.world_size].tolist()
        size = self.batch_size
        return [mine[j * size : (j + 1) * size] for j in range(self.batches_per_epoch)]

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._batches = self.epoch + 1, 0, None
        if self._batches is None:
            self.dataset.set_epoch(self.epoch)
            loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(
                self.dataset,  # type: ignore[arg-type]
                batch_sampler=self.epoch_batches(self.epoch)[self.position :],
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
            )
            self._batches = iter(loader)
        batch = next(self._batches)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where the stream is: ``epoch``, ``position`` and the settings that give them meaning."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "n_samples": self.n_samples,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a :meth:`state_dict`; the next batch is the one it was about to yield.

        Args:
            state: needs ``epoch`` and ``position``; ``seed``, ``batch_size``, ``world_size``
                and ``n_samples``, when present, must match this stream.

        Raises:
            ConfigError: missing keys, or settings that differ from this stream's.
        """
        epoch, position = state.get("epoch"), state.get("position")
        if not isinstance(epoch, int) or not isinstance(position, int) or epoch < 0:
            raise ConfigError(f"stream state needs integer 'epoch' and 'position', got {state!r}")
        if not 0 <= position <= self.batches_per_epoch:
            raise ConfigError(
                f"stream state position {position} is outside 0..{self.batches_per_epoch}"
            )
        for key in ("seed", "batch_size", "world_size", "n_samples"):
            if key in state and state[key] != getattr(self, key):
                raise ConfigError(
                    f"stream state was saved with {key}={state[key]} but this stream has "
                    f"{key}={getattr(self, key)}; resume with the same setting"
                )
        self.close()
        self.epoch, self.position = epoch, position

    def close(self) -> None:
        """Stop this epoch's DataLoader workers; the next batch starts new ones."""
        self._batches = None


def infinite_loader(
    dataset: EpochDataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
) -> BatchStream:
    """Batches forever, reshuffled each epoch; a thin wrapper around :class:`BatchStream`.

    The returned stream is an iterator whose ``state_dict()`` / ``load_state_dict()`` let a
    trainer resume exactly.

    Args:
        dataset: map-style dataset with ``set_epoch``.
        batch_size: samples per batch on this rank.
        num_workers: DataLoader worker processes.
        seed: shuffling seed.
        rank: this process's rank.
        world_size: number of ranks.
        drop_last: drop each epoch's last incomplete batch.
    """
    return BatchStream(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
    )
