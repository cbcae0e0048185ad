"""B-scans are drawn as OCT is read (vitreous on top); MRI slices keep their RAS display."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.axes
import numpy as np
import pytest

from segrenorm.report.figures import qualitative_panel
from segrenorm.report.lesion_panel import lesion_panel


def _origins(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []
    original = matplotlib.axes.Axes.imshow

    def spy(self: matplotlib.axes.Axes, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("origin"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    return seen


@pytest.mark.parametrize(("oct", "origin"), [(True, "upper"), (False, "lower")])
def test_panels_draw_depth_downward_on_oct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, oct: bool, origin: str
) -> None:
    seen = _origins(monkeypatch)
    image = np.full((8, 16), -1.0, np.float32)
    image[:, 0] = 1.0  # depth 0: the vitreous edge
    labels = np.zeros((8, 16), np.uint8)
    qualitative_panel(tmp_path / "p.png", source=image, target=image, harmonized={"m": image},
                      predictions={"m": labels}, class_names=["background", "IRF"],
                      oct=oct)  # fmt: skip
    lesion_panel(tmp_path / "l.png", rows=[{"a": image}], truths=[labels > 0],
                 predictions=[{}], labels=["x"], columns=["a"], oct=oct)  # fmt: skip
    assert seen and set(seen) == {origin}
