"""Tests of the OCT preview (segrenorm.simulate.preview_oct, and preview_subject on OCT folders).

The folders are made by hand, laid out as ``simulate oct`` writes them: two vendors on different
grids and fields of view, a rectangular IRF pocket in the central B-scan, a PED pocket in
another B-scan (so it must not show), noise-free volumes so every raster pixel is computable.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from matplotlib.image import imread

from segrenorm.cli import main
from segrenorm.errors import InputError
from segrenorm.simulate.preview import preview_subject
from segrenorm.simulate.preview_oct import (
    FLUID_COLOURS,
    OUTSIDE_COLOUR,
    OctView,
    bscan_panel,
    save_oct_preview,
)

# (shape, spacing) per vendor, (x, y, z) = (A-scan, depth, B-scan): 4.0 x 1.2 mm and 2.0 x 1.5 mm.
GRIDS = {
    "Cirrus": ((40, 60, 5), (0.1, 0.02, 0.2)),
    "Spectralis": ((20, 30, 3), (0.1, 0.05, 0.4)),
}
IRF, PED = FLUID_COLOURS[1], FLUID_COLOURS[3]


def _eye(vendor: str) -> tuple[np.ndarray, np.ndarray]:
    """The same eye on a vendor's grid: background 10, a retina band (0.3-0.6 mm deep) of 100,
    an IRF pocket of 20 (lateral -0.5..0.5 mm, depth 0.4..0.5 mm) in the central B-scan and a
    PED pocket in B-scan 0."""
    shape, (sx, sy, _) = GRIDS[vendor]
    x = -shape[0] * sx / 2 + (np.arange(shape[0]) + 0.5) * sx  # lateral voxel centres, mm
    y = (np.arange(shape[1]) + 0.5) * sy  # depth voxel centres, mm
    band = (y >= 0.3) & (y < 0.6)
    scan = np.full(shape, 10.0, np.float32)
    scan[:, band, :] = 100.0
    labels = np.zeros(shape, np.uint8)
    pocket = ((x >= -0.5) & (x < 0.5))[:, None] & ((y >= 0.4) & (y < 0.5))[None, :]
    labels[:, :, shape[2] // 2][pocket] = 1
    labels[:, :, 0][pocket] = 3
    scan[labels > 0] = 20.0
    return scan, labels


def _write(array: np.ndarray, path: Path, spacing: tuple[float, float, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def _folder(root: Path, *, metadata: bool = True) -> Path:
    """A ``simulate oct`` folder: test subject r-001 on both vendors (with clean renders), a
    training subject r-002 on the source only."""
    rows = []
    for vendor, (_, spacing) in GRIDS.items():
        scan, labels = _eye(vendor)
        for subject, split in (("r-001", "test"), ("r-002", "train")):
            if split == "train" and vendor == "Spectralis":
                continue
            image, label = (
                f"images/{vendor}/{subject}_oct.nii.gz",
                f"labels/{vendor}/{subject}_fluid.nii.gz",
            )
            _write(scan.astype(np.int16), root / image, spacing)
            _write(labels, root / label, spacing)
            clean = ""
            if split == "test":
                clean = f"images/{vendor}-clean/{subject}_oct.nii.gz"
                _write(scan, root / clean, spacing)
            rows.append([subject, vendor, image, label, split, clean])
    with (root / "subjects.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["subject", "site", "image", "label", "split", "clean"])
        writer.writerows(rows)
    if metadata:
        meta = {"benchmark": "oct", "vendors": [{"name": "Cirrus"}, {"name": "Spectralis"}]}
        (root / "simulation.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


def test_bscan_panel_draws_one_millimetre_raster_with_outlines() -> None:
    # Raster 200 x 320 over 4.0 x 1.5 mm: 0.0125 mm per column, 0.0075 mm per row.
    scan, labels = _eye("Cirrus")
    rgb = bscan_panel(scan[:, :, 2], labels[:, :, 2], (0.1, 0.02), extent_mm=(4.0, 1.5))
    assert rgb.shape == (200, 320, 3)
    # Window: 1st percentile 10 -> black, 99.5th 100 -> white, the pocket's 20 -> 1/9.
    np.testing.assert_allclose(rgb[10, 10], 0.0)  # vitreous (0.08 mm deep)
    np.testing.assert_allclose(rgb[45, 10], 1.0)  # retina band (0.34 mm deep)
    np.testing.assert_allclose(rgb[60, 160], 1 / 9)  # inside the pocket: grey, not painted
    # The pocket covers rows 53-66 ((r + 0.5) * 0.0075 in [0.4, 0.5)) and columns 120-199;
    # a two-pixel band along its inside is painted in the IRF colour.
    for r, c in [(53, 160), (54, 160), (66, 160), (65, 160), (60, 120), (60, 121), (60, 199)]:
        np.testing.assert_allclose(rgb[r, c], IRF)
    for r, c in [(52, 160), (55, 160), (64, 160), (67, 160), (60, 119), (60, 122), (60, 200)]:
        assert not np.allclose(rgb[r, c], IRF)
    # Cirrus is 1.2 mm deep: rows from (r + 0.5) * 0.0075 >= 1.2, r >= 160, lie off it.
    np.testing.assert_allclose(rgb[159, 10], 0.0)
    np.testing.assert_allclose(rgb[160:, :], np.broadcast_to(OUTSIDE_COLOUR, (40, 320, 3)))
    # B-scan 0 holds the PED pocket instead.
    other = bscan_panel(scan[:, :, 0], labels[:, :, 0], (0.1, 0.02), extent_mm=(4.0, 1.5))
    np.testing.assert_allclose(other[53, 160], PED)


def test_bscan_panel_centres_a_narrower_vendor_on_the_fovea() -> None:
    # Spectralis spans -1..1 mm of the 4 mm raster: columns 80-239; its pocket the same
    # columns 120-199 as Cirrus's (one eye, one place), at rows 53-66 again (0.4-0.5 mm).
    scan, labels = _eye("Spectralis")
    rgb = bscan_panel(scan[:, :, 1], labels[:, :, 1], (0.1, 0.05), extent_mm=(4.0, 1.5))
    np.testing.assert_allclose(rgb[:, :80], np.broadcast_to(OUTSIDE_COLOUR, (200, 80, 3)))
    np.testing.assert_allclose(rgb[:, 240:], np.broadcast_to(OUTSIDE_COLOUR, (200, 80, 3)))
    np.testing.assert_allclose(rgb[10, 80], 0.0)
    for r, c in [(53, 160), (60, 120), (60, 199)]:
        np.testing.assert_allclose(rgb[r, c], IRF)
    np.testing.assert_allclose(rgb[60, 160], 1 / 9)


def test_oct_preview_png_shows_every_vendor_and_clean_render(tmp_path: Path) -> None:
    root = _folder(tmp_path / "oct")
    out = preview_subject(root, tmp_path / "figs" / "oct.png")
    assert out == tmp_path / "figs" / "oct.png"
    png = imread(str(out))[..., :3]
    # Two vendors by scan + clean: a 9.2 x 6.6 inch figure at 110 dpi.
    assert png.shape == (726, 1012, 3)
    irf = np.all(np.abs(png - np.array(IRF)) < 0.01, axis=-1)
    ped = np.all(np.abs(png - np.array(PED)) < 0.01, axis=-1)
    height, width = irf.shape
    legend = int(height * 0.05)  # the legend strip at the bottom
    quarters = [
        irf[: height // 2, : width // 2], irf[: height // 2, width // 2 :],
        irf[height // 2 : height - legend, : width // 2],
        irf[height // 2 : height - legend, width // 2 :],
    ]  # fmt: skip
    # The IRF outline in each panel: a 80 x 14 raster-pixel rectangle, upsampled to screen.
    assert all(q.sum() > 2 * (80 + 14) for q in quarters)
    # The PED pocket is off the central B-scan: its colour is in the legend only.
    assert ped.any() and not ped[: height - legend].any()


def test_oct_preview_detects_oct_files_without_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(tmp_path / "oct", metadata=False)
    out = tmp_path / "oct.png"
    assert main(["simulate", "preview", str(root), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert imread(str(out)).shape[:2] == (726, 1012)


def test_oct_preview_refuses_a_subject_not_tested_on_every_vendor(tmp_path: Path) -> None:
    root = _folder(tmp_path / "oct")
    with pytest.raises(InputError) as caught:
        preview_subject(root, tmp_path / "x.png", subject="r-002")
    assert str(caught.value) == (
        f"{root}: subject 'r-002' is not a test subject on both sites; choose one of r-001"
    )
    assert not (tmp_path / "x.png").exists()


def test_oct_preview_refuses_bad_views(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^preview: no OCT views given; pass at least one"):
        save_oct_preview([], tmp_path / "p.png")
    scan, labels = _eye("Cirrus")
    view = OctView("Cirrus", scan, labels[:, :, :4], (0.1, 0.02, 0.2))
    with pytest.raises(InputError) as caught:
        save_oct_preview([view], tmp_path / "p.png")
    assert str(caught.value) == (
        "preview: Cirrus's volumes have the shapes scan (40, 60, 5), labels (40, 60, 4); they "
        "must share one 3D grid"
    )
    with pytest.raises(InputError, match=r"a B-scan of shape \(40, 60\) has labels of shape"):
        bscan_panel(scan[:, :, 0], labels[:, :30, 0], (0.1, 0.02), extent_mm=(4.0, 1.5))
    assert not (tmp_path / "p.png").exists()
