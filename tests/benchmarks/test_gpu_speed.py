"""Tests for ``benchmarks/gpu_speed.py`` and ``benchmarks/gpu_plan.py`` on CPU: the grid, the
arithmetic and the table against hand computations, the no-GPU path end to end, and the
training and inference closures, whose channels-last and autocast variants must compute what
the plain fp32 one does (within the tolerances stated at each test)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from segrenorm.cli import build_parser as cli_parser
from segrenorm.config.load import load_config
from segrenorm.errors import ConfigError
from segrenorm.models.inference import ConditionedGenerator
from segrenorm.models.translator import Translator
from segrenorm.training.optim import build_optimizers

ROOT = Path(__file__).resolve().parents[2]
# A tiny renormalising translator: stride 4, 16 x 16 crops, batch 2 (well under a second a step).
TINY = [
    "model.ngf=4", "model.ndf=8", "model.seg_ngf=4", "model.embed_dim=8",
    "model.n_middle_blocks=1", "data.crop_size=16", "data.batch_size=2",
]  # fmt: skip
CPU = torch.device("cpu")


def load(name: str) -> ModuleType:
    """A benchmark script as the module ``name`` (the scripts import their siblings by name)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    # The scripts import their siblings (gpu_plan, eager_reference) by name, as when run.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


plan = load("gpu_plan")
train_speed = load("train_speed")
gpu = load("gpu_speed")
V, Inf = plan.TrainVariant, plan.InferVariant


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread (the machine is shared), restored for the tests that follow."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_train_grid_crosses_precision_memory_format_and_compile() -> None:
    grid = plan.train_grid(["fp32", "bf16"], "both", "off")
    expected = [V("fp32", False, False), V("fp32", True, False)]
    assert grid == [*expected, V("bf16", False, False), V("bf16", True, False)]
    assert [v.label for v in grid] == ["fp32", "fp32+channels-last", "bf16", "bf16+channels-last"]
    full = plan.train_grid(list(plan.PRECISIONS), "both", "both")
    assert len(set(full)) == 12 and V("fp16", True, True).label == "fp16+channels-last+compile"
    assert plan.train_grid(["fp16", "fp16"], "on", "on") == [V("fp16", True, True)]


def test_infer_grid_and_quick_plan_cover_every_feature() -> None:
    assert plan.infer_grid(["bf16"], ["eager", "graph"]) == [
        Inf("bf16", "eager"),
        Inf("bf16", "graph"),
    ]
    train, infer = plan.quick_plan()
    assert {v.precision for v in train} == {"fp32", "bf16", "fp16"}
    assert [v.label for v in train if v.channels_last or v.compile] == [
        "bf16+channels-last",
        "bf16+compile",
    ]
    assert {v.mode for v in infer} == set(plan.INFER_MODES) and len(infer) == 6


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: plan.train_grid(["fp8"], "both", "both"),
         "precision 'fp8' is unknown: use any of fp32, bf16, fp16."),
        (lambda: plan.train_grid(["fp32"], "sometimes", "off"),
         "--channels-last 'sometimes' is unknown: use any of off, on, both."),
        (lambda: plan.infer_grid(["fp16"], ["eager"]),
         "inference precision 'fp16' is unknown: use any of fp32, bf16."),
        (lambda: plan.infer_grid(["bf16"], ["graphs"]), "mode 'graphs' is unknown"),
        (lambda: plan.infer_grid([], ["eager"]), "inference precision needs at least one of"),
        (lambda: plan.matmul_rate(1024, []), "must be a non-empty list of s > 0"),
        (lambda: plan.matmul_rate(1024, [0.1, 0.0]), "matmul timings [0.1, 0.0] must be"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_by_name(call: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        call()  # type: ignore[operator]
    assert message in str(info.value)


def test_plan_runs_compiling_jobs_last_keeping_the_order_otherwise() -> None:
    train = [V("fp32", False, False), V("bf16", False, True), V("bf16", True, False)]
    infer = [Inf("fp32", "eager"), Inf("bf16", "reduce-overhead"), Inf("bf16", "graph")]
    jobs = plan.plan_jobs(["ixi", "msseg"], "ixi", train, infer)
    assert [(k, p, v.label) for k, p, v in jobs] == [
        ("train", "ixi", "fp32"),
        ("train", "ixi", "bf16+channels-last"),
        ("train", "msseg", "fp32"),
        ("train", "msseg", "bf16+channels-last"),
        ("harmonize", "ixi", "fp32+eager"),
        ("harmonize", "ixi", "bf16+graph"),
        ("train", "ixi", "bf16+compile"),
        ("train", "msseg", "bf16+compile"),
        ("harmonize", "ixi", "bf16+reduce-overhead"),
    ]
    assert plan.plan_jobs([], None, train, infer) == []


def test_peak_fraction_and_volume_rate_arithmetic() -> None:
    # 2 * 1000^3 FLOP in the best of the three times, 0.25 s: 8 GFLOP/s.
    assert plan.matmul_rate(1000, [0.5, 0.25, 1.0]) == pytest.approx(8.0)
    peaks = {"fp32": 400.0, "tf32": 800.0, "bf16": 1000.0, "fp16": 1000.0}
    # 100 GFLOP in 0.5 s = 200 GFLOP/s.
    assert plan.fractions(100.0, 0.5, peaks, "fp32", True) == pytest.approx((0.5, 0.25))
    assert plan.fractions(100.0, 0.5, peaks, "fp32", False) == pytest.approx((0.5, 0.5))
    assert plan.fractions(100.0, 0.5, peaks, "bf16", True) == pytest.approx((0.5, 0.2))
    # 32 of 192 slices in 2 s: a volume takes 12 s, 5 per minute.
    assert plan.volumes_per_minute(2.0, 32, 192) == pytest.approx(5.0)


def test_table_rows_errors_and_skips() -> None:
    rows = [
        plan.Row("train", "ixi", "bf16+channels-last", "bf16", rate=12.5, best_s=0.08,
                 gflop=1161.0, fraction=0.25, own_fraction=0.125, cuda_peak_mib=2048.4,
                 note="median 0.0810 s of 10"),
        plan.Row("harmonize", "ixi", "bf16+graph", "bf16", error="RuntimeError: boom"),
        plan.Row("harmonize", "ixi", "bf16+compile", "bf16", error="skipped: --budget-s 150 spent"),
    ]  # fmt: skip
    head = (
        "kind       preset  configuration                        rate   best s    GFLOP fp32 pk"
        " own pk     MiB  note"
    )
    # Columns of 14, 8, 8, 7, 6 and 7 characters, right-aligned, one space apart.
    dashes = " " * 13 + "-" + " " * 8 + "-" + " " * 8 + "-" + " " * 7 + "-" + " " * 6 + "-"
    dashes += " " * 7 + "-  "
    assert plan.format_table(rows).splitlines() == [
        head,
        "train      ixi     bf16+channels-last             12.50 it/s   0.0800   1161.0   25.0%"
        "  12.5%    2048  median 0.0810 s of 10",
        "harmonize  ixi     " + "bf16+graph".ljust(27) + dashes + "ERROR RuntimeError: boom",
        "harmonize  ixi     " + "bf16+compile".ljust(27) + dashes + "skipped: --budget-s 150 spent",
    ]  # fmt: skip
    assert plan.format_table([]) == head


def test_multi_gpu_hint_is_a_valid_segrenorm_train_command() -> None:
    hint = plan.multi_gpu_hint(4, "msseg")
    command = hint.split("`")[1].split()
    assert command[:4] == ["torchrun", "--standalone", "--nproc_per_node", "4"]
    assert command[4:6] == ["-m", "segrenorm"]
    args = cli_parser().parse_args(command[6:])  # the real CLI accepts every flag
    assert (args.command, args.config, args.iterations) == ("train", "msseg", 300)


def test_resolve_fills_quick_defaults_and_plans_the_quick_grid() -> None:
    args = plan.build_parser("x").parse_args(["--quick"])
    jobs = plan.resolve(args)
    assert (args.presets, args.iterations, args.warmup, args.repeats) == (["ixi"], 3, 2, 1)
    assert args.budget_s == plan.QUICK_BUDGET_S
    assert jobs == plan.plan_jobs(["ixi"], "ixi", *plan.quick_plan())
    full = plan.resolve(plan.build_parser("x").parse_args(["--parts", "train"]))
    assert len(full) == 24 and {k for k, _, _ in full} == {"train"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--presets", "nope"], "nope"),
        (["--iterations", "0"], "--iterations=0 must be >= 1."),
        (["--batch-size", "-1"], "--batch-size=-1 must be >= 1."),
        (["--infer-modes", "graphs"], "mode 'graphs' is unknown"),
    ],
)
def test_bad_options_exit_2_before_any_device_work(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        gpu.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_no_gpu_prints_one_line_writes_the_skip_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--quick", "--json", str(tmp_path / "gpu.json")]) == 0
    assert capsys.readouterr().out == plan.NO_GPU + "\n"
    assert json.loads((tmp_path / "gpu.json").read_text()) == {
        "device": None,
        "skipped": plan.NO_GPU,
    }


def test_no_gpu_script_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_speed.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [plan.NO_GPU]
    assert json.loads(out.read_text())["device"] is None


def test_timed_and_flop_count() -> None:
    calls: list[int] = []
    seconds = plan.timed(lambda: calls.append(1), 3, CPU)
    assert len(seconds) == 3 and calls == [1, 1, 1] and min(seconds) >= 0.0
    a, b = torch.ones(4, 5), torch.ones(5, 3)
    assert plan.count_gflop(lambda: a @ b) == pytest.approx(2 * 4 * 5 * 3 / 1e9)


def test_slice_stack_pads_clamps_neighbours_and_fills_the_last_batch() -> None:
    volume = np.full((5, 6, 4), -1.0, dtype=np.float32)
    for z in (1, 2, 3):  # slice 0 is background and is left out
        volume[1:4, 2:5, z] = 0.1 * z
    stack, n = plan.slice_stack(volume, stride=4, context=3, batch=2)
    assert n == 3 and tuple(stack.shape) == (4, 3, 8, 8)
    expected = np.full((4, 3, 8, 8), -1.0, dtype=np.float32)
    for i, z in enumerate((1, 2, 3)):
        for c, nb in enumerate((z - 1, z, min(z + 1, 3))):  # clamped at the last slice
            expected[i, c, :5, :6] = volume[:, :, nb]
    np.testing.assert_array_equal(stack.numpy(), expected)


def test_synthetic_head_has_the_mni_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nilearn", None)  # the import now fails
    volume, source = plan.head_volume()
    assert volume.shape == plan.MNI_SHAPE and source.startswith("synthetic head")
    assert volume.min() == -1.0 and volume.max() == pytest.approx(1.0)
    assert 0.3 < float((volume > -1.0).mean()) < 0.7  # a head, not an empty or full box


def tiny_model() -> tuple[Translator, dict[str, torch.optim.Adam], dict[str, torch.Tensor]]:
    config = load_config("cpu", overrides=TINY)
    torch.manual_seed(config.run.seed)
    model = Translator.from_config(config).train()
    return model, build_optimizers(model, config.optim), train_speed.make_batch(config, CPU)


def tiny_losses(variant: object, steps: int = 2) -> np.ndarray:
    step = gpu.build_training("cpu", variant, CPU, TINY)
    return np.array([step() for _ in range(steps)])  # (steps, terms)


def test_training_closure_updates_as_train_speeds_iteration() -> None:
    """Two iterations of the closure leave every parameter where ``make_iteration``'s do."""
    ours, opt_ours, batch = tiny_model()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = gpu.train_iteration(ours, opt_ours, batch, amp=None, scaler=scaler)
    losses = [step(), step()]
    theirs, opt_theirs, _ = tiny_model()
    other, close = train_speed.make_iteration(theirs, opt_theirs, batch, amp=None, parallel=False)
    other()
    other()
    close()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert losses[0] != losses[1]  # the parameters moved between the two iterations


def test_gradient_scaling_leaves_fp32_training_unchanged() -> None:
    """fp16's mechanism in fp32: scaling by 2**16 and unscaling is exact (tolerance 1e-6)."""
    runs = []
    for enabled in (False, True):
        model, optimizers, batch = tiny_model()
        scaler = torch.amp.GradScaler("cpu", enabled=enabled)
        step = gpu.train_iteration(model, optimizers, batch, amp=None, scaler=scaler)
        runs.append(np.array([step() for _ in range(3)]))
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-6, atol=1e-7)


def test_channels_last_training_computes_the_plain_losses() -> None:
    """Other convolution kernels round differently (about 1e-7 here): 1e-5 on the first step,
    1e-4 after an Adam update (which can turn tiny gradient differences into larger steps)."""
    plain = tiny_losses(plan.TrainVariant("fp32", False, False))
    nhwc = tiny_losses(plan.TrainVariant("fp32", True, False))
    np.testing.assert_allclose(nhwc[0], plain[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nhwc[1], plain[1], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_training_is_close_to_fp32_but_not_fp32() -> None:
    """bf16 keeps 8 significant bits: first-step losses within 1e-2 (about 3e-3 here)."""
    plain = tiny_losses(plan.TrainVariant("fp32", False, False), steps=1)
    bf16 = tiny_losses(plan.TrainVariant("bf16", False, False), steps=1)
    np.testing.assert_allclose(bf16, plain, rtol=1e-2, atol=1e-2)
    assert np.abs(bf16 - plain).max() > 1e-6  # autocast was in effect


def test_fp16_training_off_cuda_is_refused_and_reported_in_its_row() -> None:
    variant = plan.TrainVariant("fp16", False, False)
    with pytest.raises(ConfigError, match="precision fp16 needs a CUDA device, not cpu"):
        gpu.build_training("cpu", variant, CPU, TINY)
    ctx = {"overrides": TINY, "warmup": 1, "iterations": 1, "flops": {}, "peaks": {}}
    row = gpu.measure_train("cpu", variant, CPU, {**ctx, "tf32": False})
    assert row.rate is None and row.error.startswith("ConfigError: precision fp16 needs")


def test_measured_training_row_is_consistent() -> None:
    peaks = {"fp32": 100.0, "tf32": 200.0, "bf16": 400.0, "fp16": 400.0}
    flops: dict[str, float] = {}
    ctx = {"overrides": TINY, "warmup": 1, "iterations": 2, "flops": flops, "peaks": peaks}
    row = gpu.measure_train("cpu", plan.TrainVariant("fp32", False, False), CPU,
                            {**ctx, "tf32": True})  # fmt: skip
    assert row.error is None and row.rate == pytest.approx(1.0 / row.best_s)
    step = gpu.build_training("cpu", plan.TrainVariant("fp32", False, False), CPU, TINY)
    step()  # the count is taken on the second iteration, with the optimiser state built
    assert row.gflop == flops["cpu"] == pytest.approx(plan.count_gflop(step))
    achieved = row.gflop / row.best_s
    assert (row.fraction, row.own_fraction) == pytest.approx((achieved / 100, achieved / 200))


def test_inference_closure_is_the_conditioned_generator() -> None:
    """Eager fp32 is exactly the inference graph; bf16 within 5e-2 of it (outputs in (-1, 1))."""
    volume = np.full((12, 10, 5), -1.0, dtype=np.float32)
    volume[2:10, 2:8, 1:4] = np.linspace(-0.5, 0.8, 8 * 6 * 3, dtype=np.float32).reshape(8, 6, 3)
    stack, n = plan.slice_stack(volume, stride=4, context=1, batch=2)
    assert n == 3 and tuple(stack.shape) == (4, 1, 12, 12)
    shape = (2, *stack.shape[1:])
    run = gpu.build_inference("cpu", plan.InferVariant("fp32", "eager"), CPU, shape, TINY)
    out = gpu.translate_slices(run, stack, 2, CPU)
    config = load_config("cpu", overrides=TINY)
    torch.manual_seed(config.run.seed)
    module = ConditionedGenerator(Translator.from_config(config).eval(), "AB", seg_chunk=4)
    with torch.no_grad():
        expected = torch.cat([module(stack[:2]), module(stack[2:])])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    bf16 = gpu.build_inference("cpu", plan.InferVariant("bf16", "eager"), CPU, shape, TINY)
    torch.testing.assert_close(gpu.translate_slices(bf16, stack, 2, CPU), expected, rtol=0,
                               atol=5e-2)  # fmt: skip


def test_cuda_graph_modes_off_cuda_are_refused_and_reported() -> None:
    shape = (2, 1, 12, 12)
    with pytest.raises(ConfigError, match="mode 'graph' needs CUDA, not cpu: use eager or"):
        gpu.build_inference("cpu", plan.InferVariant("bf16", "graph"), CPU, shape, TINY)
    stack = torch.full((2, 1, 12, 12), -1.0)
    ctx = {"overrides": TINY, "batch": 2, "stack": stack, "timed": 2, "repeats": 1, "flops": {}}
    row = gpu.measure_harmonize("cpu", plan.InferVariant("fp32", "reduce-overhead"), CPU, ctx)
    assert row.rate is None and "mode 'reduce-overhead' needs CUDA" in row.error


def test_measured_harmonize_row_extrapolates_to_the_volume() -> None:
    stack = torch.full((6, 1, 8, 8), -1.0)
    stack[:, :, 2:6, 2:6] = 0.5
    flops: dict[str, float] = {}
    peaks = {"fp32": 100.0, "tf32": 200.0, "bf16": 400.0}
    ctx = {"overrides": TINY, "batch": 2, "stack": stack, "timed": 4, "repeats": 1,
           "flops": flops, "peaks": peaks, "tf32": False}  # fmt: skip
    row = gpu.measure_harmonize("cpu", plan.InferVariant("fp32", "eager"), CPU, ctx)
    assert row.error is None and row.note == "6 slices 8x8, batch 2, from 4 slices"
    # 4 of 6 slices were timed: a volume takes 1.5 times as long.
    assert row.rate == pytest.approx(60.0 / row.best_s)
    run = gpu.build_inference("cpu", plan.InferVariant("fp32", "eager"), CPU, (2, 1, 8, 8), TINY)
    per_slice = plan.count_gflop(lambda: run(stack[:2])) / 2
    assert row.gflop == pytest.approx(6 * per_slice)
    assert row.fraction == pytest.approx(row.gflop / row.best_s / 100.0)
