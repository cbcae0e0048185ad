"""Caches of more than two sites: one model per (source, target) pair, and the pair a run saw.

The paper trains MS-SEG one model per scanner pair, every source scanner toward one target.
:func:`train_toward` does that on a cache of N sites: for each other site in cache order it
trains ``data.source=SITE, data.target=TARGET`` in its own run folder (named
``NNNNN-<config>-<translator>-<source>-to-<target>``), one after the other, and reuses a
pair that already finished with the same config on the same cache (one stopped part-way
is resumed). :func:`model_pair` reads
the (source, target) site names a run was trained on from its checkpoint, and
:func:`evaluation_pair` is the pair ``segrenorm evaluate`` opens a cache with.

Example:
    >>> runs = train_toward(load_config("cpu"), "cache/", "runs/", "HH")  # doctest: +SKIP
    >>> [(r.source, r.target, r.status) for r in runs]  # doctest: +SKIP
    [('Guys', 'HH', 'trained'), ('IOP', 'HH', 'reused')]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from segrenorm.config.schema import Config
from segrenorm.data.manifest import open_manifest
from segrenorm.data.pairs import site_key
from segrenorm.errors import ConfigError, SegrenormError

__all__ = [
    "EVALUATE_CHOICE",
    "PairRun",
    "evaluation_pair",
    "find_pair_run",
    "model_pair",
    "train_toward",
]

#: How ``segrenorm evaluate`` is told the pair of a many-site cache, for messages.
EVALUATE_CHOICE = "--model RUN (its pair) or --source NAME --target NAME"


@dataclass(frozen=True)
class PairRun:
    """One (source, target) pair of :func:`train_toward`.

    Args:
        source: the source site's name.
        target: the target site's name.
        config: the pair's config (``data.source`` and ``data.target`` set).
        run_dir: the run folder; None for a pair a dry run would train.
        status: ``"trained"`` (trained or resumed to the end), ``"reused"`` (a finished run
            of the same config and cache) or ``"planned"`` (dry run).
    """

    source: str
    target: str
    config: Config
    run_dir: Path | None
    status: str


def find_pair_run(out: str | Path, config: Config, cache: str | Path) -> tuple[Path, int] | None:
    """The newest run in ``out`` of exactly ``config`` on ``cache``, and its saved step.

    Its ``config.json`` must record the same resolved config and cache folder, and it must
    hold a checkpoint (``checkpoints/last.pt``, else ``final.pt``). A run whose step reached
    ``config.optim.total_iterations`` and that holds ``final.pt`` is finished; any other
    (stopped with ``--iterations``, killed) can be resumed.

    Args:
        out: the folder holding run directories (it need not exist).
        config: the resolved config of the pair.
        cache: the slice cache folder.

    Returns:
        ``(run directory, step)``, or None when no run matches.
    """
    from segrenorm.models.checkpoint import load_checkpoint

    root = Path(out)
    if not root.is_dir():
        return None
    wanted, where = config.to_dict(), str(Path(cache).resolve())
    found = None
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            record = json.loads((run / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # not a run this workflow can vouch for
        same = isinstance(record, dict) and record.get("config") == wanted
        if not same or record.get("cache") != where:
            continue
        for file in (run / "checkpoints" / "last.pt", run / "final.pt"):
            if file.is_file():
                try:
                    found = (run, int(load_checkpoint(file).get("step", 0)))
                except SegrenormError:
                    continue  # a checkpoint cut short: try the other one
                break
    return found


def _pair_config(config: Config, source: str, target: str) -> Config:
    data = dataclasses.replace(config.data, source=source, target=target)
    return dataclasses.replace(config, data=data).validate()


def train_toward(
    config: Config,
    cache: str | Path,
    out: str | Path,
    target: str,
    *,
    dry_run: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> list[PairRun]:
    """Train every other site of ``cache`` toward ``target``: one model and run per pair.

    Pairs run in cache order, one after the other. A pair whose run already finished with the
    same config on the same cache (:func:`find_pair_run`) is reused, and ``say`` tells so; one
    stopped part-way (``--iterations``, Ctrl-C, killed) is resumed from its ``last.pt``.

    Args:
        config: the config every pair starts from (``data.source`` unset; ``data.target``
            unset or equal to ``target``).
        cache: a slice cache of two or more sites.
        out: the folder holding run directories.
        target: the target site, by name (or cache key).
        dry_run: check every pair's config against the cache and report the plan, training
            nothing.
        progress: show each run's progress bar.
        say: where the plan and progress lines go.

    Returns:
        One :class:`PairRun` per source site, in cache order.

    Raises:
        ConfigError: an unknown target, a config that already names a source or another
            target, ``data.direction`` other than ``AB``, or a pair's config that does not
            fit the cache.
        CacheError: the cache is unusable.
        TrainingInterrupted: a pair's training was stopped (the finished pairs are kept and
            reused by the next call).
    """
    from segrenorm.data.slice_cache import SliceCache
    from segrenorm.training.session import check_against_cache
    from segrenorm.training.trainer import train

    if config.data.direction != "AB":
        raise ConfigError(
            f"data.direction={config.data.direction!r} with --to {target}: each model of "
            "--to translates its source site toward the target as data.direction=AB; drop "
            "--set data.direction (harmonize --direction BA runs a model the other way)"
        )
    sites = {str(k): str(v) for k, v in open_manifest(cache)["sites"].items()}
    target_key = site_key(cache, sites, target, "target", "--to NAME")
    target_name = sites[target_key]
    if config.data.source is not None:
        raise ConfigError(
            f"data.source={config.data.source!r} picks one pair, but --to {target} trains every "
            "other site toward it: drop data.source, or train that pair alone with --set "
            "data.source=NAME --set data.target=NAME"
        )
    given = config.data.target
    if (
        given is not None
        and site_key(cache, sites, given, "data.target", "--to NAME") != target_key
    ):
        raise ConfigError(
            f"data.target={config.data.target!r} differs from --to {target}: give the target once"
        )
    plan = []
    for name in (n for n in sites.values() if n != target_name):
        pair = _pair_config(config, name, target_name)
        check_against_cache(pair, SliceCache.open(cache, pair=(name, target_name)))
        plan.append(pair)
    say(f"{len(plan)} pair(s) toward {target_name}, one model each, in {out}:")
    runs: list[PairRun] = []
    for pair in plan:
        source, total = str(pair.data.source), pair.optim.total_iterations
        found = find_pair_run(out, pair, cache)
        head = f"  {source} -> {target_name}:"
        if found is not None and found[1] >= total and (found[0] / "final.pt").is_file():
            say(f"{head} already finished in {found[0]}; reused")
            runs.append(PairRun(source, target_name, pair, found[0], "reused"))
        elif dry_run:
            what = "train a new run" if found is None else f"resume {found[0]} at step {found[1]}"
            say(f"{head} would {what}")
            runs.append(PairRun(source, target_name, pair, None, "planned"))
        else:
            resume = None if found is None else found[0]
            say(f"{head} training" + ("" if resume is None else f", resuming {resume}"))
            run_dir = train(pair, cache, out, resume=resume, progress=progress)
            say(f"{head} finished in {run_dir}")
            runs.append(PairRun(source, target_name, pair, run_dir, "trained"))
    return runs


def model_pair(path: str | Path) -> tuple[str, str]:
    """The (source, target) site names a run or checkpoint was trained on, as sites A, B.

    Args:
        path: a run directory (``final.pt`` preferred) or a checkpoint.

    Raises:
        InputError: the path does not exist.
        CheckpointError: the checkpoint is unusable or lacks its training facts.
    """
    from segrenorm.data.facts import TrainingFacts
    from segrenorm.models.checkpoint import load_checkpoint, resolve_checkpoint

    file = resolve_checkpoint(path, prefer=("final.pt", "last.pt"))
    names = TrainingFacts.from_checkpoint(load_checkpoint(file), file).site_names
    return str(names.get("A", "A")), str(names.get("B", "B"))


def evaluation_pair(
    cache: str | Path,
    models: Mapping[str, str | Path],
    source: str | None = None,
    target: str | None = None,
) -> tuple[str | None, str | None] | None:
    """The pair ``segrenorm evaluate`` opens ``cache`` with: the runs' own, or the one given.

    Every run must have been trained on the same (source, target) pair. ``source`` and
    ``target`` (``--source``/``--target``) choose the pair for harmonized folders without a
    run, and must agree with the runs when both are given. On a two-site cache sharing
    neither site name with the runs' pair (runs trained on another cache of the same
    scanners), the cache is read as it is, as before pairs existed; one sharing only one of
    the two names is refused (that run saw another site).

    Args:
        cache: the slice cache.
        models: method name -> run directory or checkpoint.
        source: the source site given on the command line, or None.
        target: the target site given on the command line, or None.

    Returns:
        ``(source, target)`` for :meth:`SliceCache.open`, or None for the cache as it is.

    Raises:
        ConfigError: runs of different pairs, ``source``/``target`` unlike the runs', or a
            two-site cache holding only one site of the runs' pair.
    """
    pairs = {name: model_pair(path) for name, path in models.items()}
    if len(set(pairs.values())) > 1:
        listed = ", ".join(f"{name} ({s} -> {t})" for name, (s, t) in pairs.items())
        raise ConfigError(
            f"the runs were trained on different site pairs: {listed}; evaluate the runs of "
            "one pair together"
        )
    given = (source, target)
    if pairs:
        found = next(iter(pairs.values()))
        for role, value, theirs in zip(("--source", "--target"), given, found, strict=True):
            if value is not None and value != theirs:
                raise ConfigError(
                    f"{role} {value} differs from the runs' pair {found[0]} -> {found[1]}: "
                    f"omit {role} or evaluate runs trained on that pair"
                )
        sites = [str(v) for v in open_manifest(cache)["sites"].values()]
        shared = set(found) & set(sites)
        if len(sites) == 2 and not shared:
            return None  # the runs' sites have other names here: read the cache as it is
        if len(sites) == 2 and shared != set(found):
            missing = ", ".join(sorted(set(found) - shared))
            raise ConfigError(
                f"the runs were trained on {found[0]} -> {found[1]}, but the cache {cache} "
                f"holds {sites[0]} and {sites[1]}: it lacks site {missing}. Evaluate on the "
                "cache the runs were trained on (or one holding both of their sites)"
            )
        return found
    return None if given == (None, None) else given
