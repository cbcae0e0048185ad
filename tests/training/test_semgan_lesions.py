"""SemGAN is excluded on caches of sparse lesion masks, as the paper does on MS-SEG.

The rule (segrenorm.training.resolve.semgan_exclusion): two classes, and class 1 a pocket
class (named ``lesion``, ``IRF``, ``SRF`` or ``PED``) or covering under 2% of the foreground
voxels. A RETOUCH cache of four classes keeps SemGAN, as in the paper. ``train`` refuses it;
``compare`` skips SemGAN with a note.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segrenorm.cli import main
from segrenorm.data.slice_cache import SliceCache
from segrenorm.errors import ConfigError
from segrenorm.training.resolve import SPARSE_LESION_FRACTION, semgan_exclusion
from segrenorm.training.session import check_against_cache
from segrenorm.workflows.compare import compare
from tests.conftest import tiny_config, write_cache

SHAPE = (32, 32)


def lesion_cache(root: Path, names: list[str], lesion_pixels: int, n: int = 4) -> Path:
    """Two sites of ``n`` slices, a 20x20 foreground square each, ``lesion_pixels`` of it
    labelled 1 on every slice (a 2-class cache; more names add classes 2.. on no pixel)."""
    sites, subjects = {}, []
    for site in ("A", "B"):
        masks = np.zeros((n, *SHAPE), np.uint8)
        masks[:, 6:26, 6:26] = 1
        labels = np.zeros_like(masks)
        flat = labels.reshape(n, -1)
        inside = np.flatnonzero(masks[0].reshape(-1))
        flat[:, inside[:lesion_pixels]] = 1
        images = np.where(masks > 0, 0.2 + 0.5 * labels, -1.0).astype(np.float32)
        sites[site] = {
            "images": images, "labels": labels, "masks": masks,
            "slices": np.stack([np.zeros(n), np.arange(n)], 1).astype(np.int32),
        }  # fmt: skip
        subjects.append(
            {"subject": f"sub-{site}", "site": site, "image": f"/x/{site}.nii.gz", "label": None,
             "split": "train", "fold": 0, "shape": [*SHAPE, n], "n_slices": n, "first_row": 0}
        )  # fmt: skip
    return write_cache(root, sites, subjects, class_names=names)


def test_a_class_named_lesion_excludes_semgan_whatever_its_share(tmp_path: Path) -> None:
    # 200 of the 400 foreground pixels: 50%, far above the threshold, but named lesion.
    cache = SliceCache.open(lesion_cache(tmp_path / "c", ["background", "lesion"], 200))
    why = semgan_exclusion(cache)
    assert why is not None
    assert why.startswith(
        f"model.translator=semgan is excluded on {cache.path}: its labels are sparse lesion "
        "masks (2 classes, class 1 'lesion' covering 50.00% of the foreground voxels; the rule: "
        "class 1 named lesion/irf/srf/ped (any case), or under 2%)."
    )
    assert "dropping the only foreground class leaves it no semantic information" in why
    assert "the paper excludes SemGAN on MS-SEG" in why
    assert why.endswith("use model.translator=segrenorm (or s-cyclegan, cyclegan) instead")


def test_a_sparse_foreground_class_excludes_semgan_under_any_name(tmp_path: Path) -> None:
    # 4 of 400 foreground pixels per slice: 1.00% (counted by hand), under 2%.
    assert SPARSE_LESION_FRACTION == 0.02
    cache = SliceCache.open(lesion_cache(tmp_path / "c", ["background", "spots"], 4))
    why = semgan_exclusion(cache)
    assert why is not None and "class 1 'spots' covering 1.00% of the foreground voxels" in why


@pytest.mark.parametrize(
    ("names", "pixels"),
    [(["background", "tissue"], 8), (["background", "tissue"], 200), (["bg", "a", "lesion"], 4)],
)
def test_dense_two_class_and_many_class_caches_keep_semgan(
    tmp_path: Path, names: list[str], pixels: int
) -> None:
    # 8 of 400 = 2.00%: at the threshold, not under it. A third class: dropout still has one.
    cache = SliceCache.open(lesion_cache(tmp_path / "c", names, pixels))
    assert semgan_exclusion(cache) is None
    check_against_cache(tiny_config("semgan", data={"n_classes": len(names)}), cache)


@pytest.mark.parametrize("name", ["IRF", "ped"])
def test_a_two_class_fluid_cache_excludes_semgan(tmp_path: Path, name: str) -> None:
    # 200 of 400 pixels (50%): excluded by the name alone, as for lesion.
    cache = SliceCache.open(lesion_cache(tmp_path / "c", ["background", name], 200))
    why = semgan_exclusion(cache)
    assert why is not None and f"class 1 {name!r} covering 50.00% of the foreground" in why


def test_a_sparse_four_class_fluid_cache_keeps_semgan(tmp_path: Path) -> None:
    # RETOUCH's classes, 4 of 400 pixels of IRF (1%): SemGAN runs there in the paper.
    names = ["background", "IRF", "SRF", "PED"]
    cache = SliceCache.open(lesion_cache(tmp_path / "c", names, 4))
    assert semgan_exclusion(cache) is None
    check_against_cache(tiny_config("semgan", data={"n_classes": 4}), cache)


def test_a_name_holding_lesion_is_no_pocket_class_but_sparse_still_excludes(
    tmp_path: Path,
) -> None:
    dense = SliceCache.open(lesion_cache(tmp_path / "d", ["background", "lesions_old"], 200))
    assert semgan_exclusion(dense) is None  # 50%: dense, and not a pocket name
    sparse = SliceCache.open(lesion_cache(tmp_path / "s", ["background", "ms_lesion"], 4))
    assert semgan_exclusion(sparse) is not None


def test_training_refuses_semgan_on_a_lesion_cache(tmp_path: Path) -> None:
    cache = SliceCache.open(lesion_cache(tmp_path / "c", ["background", "lesion"], 4))
    with pytest.raises(ConfigError, match=r"model\.translator=semgan is excluded on"):
        check_against_cache(tiny_config("semgan", data={"n_classes": 2}), cache)
    check_against_cache(tiny_config("segrenorm", data={"n_classes": 2}), cache)  # the others train


def test_train_cli_refuses_semgan_on_a_lesion_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = lesion_cache(tmp_path / "c", ["background", "lesion"], 4)
    argv = ["train", "--config", "msseg-cpu", "--data", str(cache), "--out", str(tmp_path / "runs"),
            "--set", "model.translator=semgan", "--set", "data.semantic_dropout=0.5",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.translator=semgan is excluded on" in err
    assert "use model.translator=segrenorm (or s-cyclegan, cyclegan) instead" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert main([*argv, "--dry-run"]) == 2  # refused before a dry run prints a config too
    assert "model.translator=semgan is excluded on" in capsys.readouterr().err


def test_compare_skips_semgan_on_a_lesion_cache(tmp_path: Path, monkeypatch: Any) -> None:
    cache = lesion_cache(tmp_path / "c", ["background", "lesion"], 4)
    trained: list[str] = []
    notes: list[str] = []

    def fake_train(cfg: Any, *_: Any, **__: Any) -> Path:
        trained.append(cfg.model.translator.value)
        return tmp_path / cfg.model.translator.value

    def fake_evaluate(*_: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        return None, {"runs": sorted(kwargs["models"]), **kwargs["extra"]}

    monkeypatch.setattr("segrenorm.training.trainer.train", fake_train)
    monkeypatch.setattr("segrenorm.workflows.evaluate.evaluate_cache", fake_evaluate)
    config = tiny_config(data={"n_classes": 2})
    result = compare(cache, tmp_path / "out", config, on_stage=notes.append)
    assert trained == ["cyclegan", "s-cyclegan", "segrenorm"]
    assert result.results["runs"] == ["cyclegan", "s-cyclegan", "segrenorm"]
    assert list(result.results["skipped"]) == ["semgan"]
    assert any(n.startswith("semgan: skipped: model.translator=semgan is excluded") for n in notes)
    with pytest.raises(
        ConfigError, match=r"no translator left to compare: model\.translator=semgan"
    ):
        compare(cache, tmp_path / "out2", config, translators=["semgan"])
