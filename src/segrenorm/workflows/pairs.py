"""Caches of more than two sites: one model per (source, target) pair, and the pair a run saw.

The paper trains MS-SEG one model per scanner pair (SA->SV, SA->PI, SV->PI). :func:`train_pairs`
does that on a cache of N sites: for each pair it trains ``data.source=SOURCE,
data.target=TARGET`` in its own run folder (named ``NNNNN-<config>-<translator>-<source>-to-
<target>``), one after the other, and reuses a pair that already finished with the same config
on the same cache (one stopped part-way is resumed). :func:`train_toward` is the pairs "every
other site -> TARGET". :func:`model_pair` reads the (source, target) site names a run was
trained on from its checkpoint, and :func:`evaluation_pair` is the pair ``segrenorm evaluate``
opens a cache with.

Example:
    >>> pairs = [("SA", "SV"), ("SV", "PI")]
    >>> runs = train_pairs(load_config("cpu"), "cache/", "runs/", pairs)  # doctest: +SKIP
    >>> [(r.source, r.target, r.status) for r in runs]  # doctest: +SKIP
    [('SA', 'SV', 'trained'), ('SV', 'PI', 'reused')]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
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
    "finished_pair_run",
    "model_pair",
    "pair_config",
    "resolve_pairs",
    "train_pairs",
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


def pair_config(config: Config, source: str, target: str) -> Config:
    """``config`` with ``data.source`` and ``data.target`` set to one pair, validated.

    Args:
        config: the shared config.
        source: the source site's name.
        target: the target site's name.
    """
    data = dataclasses.replace(config.data, source=source, target=target)
    return dataclasses.replace(config, data=data).validate()


def finished_pair_run(out: str | Path, config: Config, cache: str | Path) -> Path | None:
    """The run of :func:`find_pair_run` if it reached its last step and holds ``final.pt``.

    Args:
        out: the folder holding run directories.
        config: the resolved config of the pair.
        cache: the slice cache folder.
    """
    found = find_pair_run(out, config, cache)
    if found is None or found[1] < config.optim.total_iterations:
        return None
    return found[0] if (found[0] / "final.pt").is_file() else None


def _direction_ab(config: Config, flag: str) -> None:
    if config.data.direction != "AB":
        raise ConfigError(
            f"data.direction={config.data.direction!r} with {flag}: each model of "
            f"{flag.split()[0]} translates its source site toward the target as "
            "data.direction=AB; drop --set data.direction (harmonize --direction BA runs a "
            "model the other way)"
        )


def resolve_pairs(
    config: Config, cache: str | Path, pairs: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The site names of ``pairs`` (names or keys of ``cache``), checked for ``--pairs``.

    Args:
        config: the shared config (must leave ``data.source``/``data.target`` unset and
            ``data.direction`` at AB: each pair sets its own).
        cache: the slice cache.
        pairs: ``(source, target)`` items as given.

    Raises:
        ConfigError: no pair, an unknown site, a pair of one site, a pair given twice, or a
            config naming a source, a target or direction BA.
    """
    listed = ",".join(f"{s}:{t}" for s, t in pairs)
    _direction_ab(config, f"--pairs {listed}")
    for field in ("source", "target"):
        if getattr(config.data, field) is not None:
            raise ConfigError(
                f"data.{field}={getattr(config.data, field)!r} with --pairs {listed}: --pairs "
                f"gives every pair's sites; drop --set data.{field}"
            )
    if not pairs:
        raise ConfigError("--pairs names no pair: give SOURCE:TARGET items, e.g. SA:SV,SA:PI")
    sites = {str(k): str(v) for k, v in open_manifest(cache)["sites"].items()}
    how = "--pairs SOURCE:TARGET (names or keys)"
    named: list[tuple[str, str]] = []
    for source, target in pairs:
        pair = (
            sites[site_key(cache, sites, source, "source", how)],
            sites[site_key(cache, sites, target, "target", how)],
        )
        if pair[0] == pair[1]:
            raise ConfigError(
                f"--pairs item {source}:{target} translates site {pair[0]} to itself: a pair "
                "needs two different sites"
            )
        if pair in named:
            raise ConfigError(
                f"--pairs gives the pair {pair[0]} -> {pair[1]} twice ({listed}): name each "
                "pair once"
            )
        named.append(pair)
    return named


def train_pairs(
    config: Config,
    cache: str | Path,
    out: str | Path,
    pairs: Sequence[tuple[str, str]],
    *,
    dry_run: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> list[PairRun]:
    """Train one model per (source, target) pair of ``cache``, one after the other.

    Each pair trains ``data.source=SOURCE, data.target=TARGET`` in its own run folder. A pair
    whose run already finished with the same config on the same cache
    (:func:`finished_pair_run`) is reused, and ``say`` tells so; one stopped part-way is
    resumed from its ``last.pt``. Every pair is checked against the cache before any trains.

    Args:
        config: the config every pair starts from (see :func:`resolve_pairs`).
        cache: a slice cache of two or more sites.
        out: the folder holding run directories.
        pairs: ``(source, target)`` site names (or cache keys), in training order.
        dry_run: check every pair and report the plan, training nothing.
        progress: show each run's progress bar.
        say: where the plan and progress lines go.

    Returns:
        One :class:`PairRun` per pair, in the given order, with site names.

    Raises:
        ConfigError: as :func:`resolve_pairs`, or a pair's config unfit for the cache.
        CacheError: the cache is unusable.
        TrainingInterrupted: a pair's training was stopped (the finished pairs are kept and
            reused by the next call).
    """
    named = resolve_pairs(config, cache, pairs)
    say(f"{len(named)} pair(s), one model each, in {out}:")
    return _train_plan(config, cache, out, named, dry_run=dry_run, progress=progress, say=say)


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
    """:func:`train_pairs` of every other site of ``cache`` toward ``target``, in cache order.

    Args and the rest as :func:`train_pairs`, except that ``target`` is the target site (name
    or cache key) and ``config.data.target`` may already name it.

    Raises:
        ConfigError: an unknown target, a config naming a source or another target,
            ``data.direction`` other than ``AB``, or a pair's config unfit for the cache.
    """
    _direction_ab(config, f"--to {target}")
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
    named = [(name, target_name) for name in sites.values() if name != target_name]
    say(f"{len(named)} pair(s) toward {target_name}, one model each, in {out}:")
    return _train_plan(config, cache, out, named, dry_run=dry_run, progress=progress, say=say)


def _train_plan(
    config: Config,
    cache: str | Path,
    out: str | Path,
    named: Sequence[tuple[str, str]],
    *,
    dry_run: bool,
    progress: bool,
    say: Callable[[str], None],
) -> list[PairRun]:
    """Check every pair against the cache, then reuse, resume or train each in order."""
    from segrenorm.data.slice_cache import SliceCache
    from segrenorm.training.session import check_against_cache
    from segrenorm.training.trainer import train

    plan = []
    for source, target in named:
        pair = pair_config(config, source, target)
        check_against_cache(pair, SliceCache.open(cache, pair=(source, target)))
        plan.append(pair)
    runs: list[PairRun] = []
    for pair, (source, target) in zip(plan, named, strict=True):
        head = f"  {source} -> {target}:"
        done = finished_pair_run(out, pair, cache)
        found = None if done is not None else find_pair_run(out, pair, cache)
        if done is not None:
            say(f"{head} already finished in {done}; reused")
            runs.append(PairRun(source, target, pair, done, "reused"))
        elif dry_run:
            what = "train a new run" if found is None else f"resume {found[0]} at step {found[1]}"
            say(f"{head} would {what}")
            runs.append(PairRun(source, target, pair, None, "planned"))
        else:
            resume = None if found is None else found[0]
            say(f"{head} training" + ("" if resume is None else f", resuming {resume}"))
            run_dir = train(pair, cache, out, resume=resume, progress=progress)
            say(f"{head} finished in {run_dir}")
            runs.append(PairRun(source, target, pair, run_dir, "trained"))
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
