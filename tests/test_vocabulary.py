"""Tests of segrenorm.vocabulary: the checked direction names and the sites they join."""

from __future__ import annotations

import pytest

from segrenorm.errors import ConfigError
from segrenorm.vocabulary import (
    DIRECTIONS,
    MODALITIES,
    POCKET_CLASS_NAMES,
    SITES,
    SLICE_AXES,
    check_direction,
    check_modality,
    pocket_classes,
    source_site,
    target_site,
)

BAD = ["ab", "ba", "A", "B", "", "ABA", "XY", "A B", " AB", "AA"]


@pytest.mark.parametrize("direction", ["AB", "BA"])
def test_check_direction_returns_a_known_direction(direction: str) -> None:
    assert check_direction(direction) == direction
    assert check_direction(direction, name="data.direction") == direction


@pytest.mark.parametrize("value", BAD)
def test_check_direction_rejects_and_names_the_value(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_direction(value)
    message = str(caught.value)
    assert message.startswith(f"direction {value!r} is unknown: use 'AB'")
    assert "'BA'" in message


@pytest.mark.parametrize("name", ["data.direction", "--direction", "harmonize direction"])
def test_check_direction_names_the_setting(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_direction("XY", name=name)
    assert str(caught.value).startswith(f"{name} 'XY' is unknown: use 'AB'")


def test_a_rejected_direction_is_a_value_error() -> None:
    # The command line reports ConfigError; callers that only know ValueError still catch it.
    with pytest.raises(ValueError, match="'ZZ' is unknown"):
        check_direction("ZZ")


@pytest.mark.parametrize(("direction", "source", "target"), [("AB", "A", "B"), ("BA", "B", "A")])
def test_source_and_target_sites(direction: str, source: str, target: str) -> None:
    assert source_site(direction) == source
    assert target_site(direction) == target


@pytest.mark.parametrize("value", ["ab", "XY", ""])
def test_sites_of_an_unknown_direction_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=f"^direction {value!r} is unknown"):
        source_site(value)
    with pytest.raises(ConfigError, match=f"^direction {value!r} is unknown"):
        target_site(value)


def test_directions_join_the_two_sites_both_ways() -> None:
    assert SITES == ("A", "B")
    assert DIRECTIONS == ("AB", "BA")
    assert {(source_site(d), target_site(d)) for d in DIRECTIONS} == {("A", "B"), ("B", "A")}


def test_slice_axes_cut_across_each_voxel_axis_once() -> None:
    assert SLICE_AXES == {"sagittal": 0, "coronal": 1, "axial": 2}


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["background", "lesion"], [1]),
        (["background", "IRF", "SRF", "PED"], [1, 2, 3]),
        (["background", "irf"], [1]),
        (["background", "csf", "Ped", "wm", "LESION"], [2, 4]),
        (["background", "lesions_old"], []),  # whole names only, not substrings
        (["background", "ms_lesion", "WM"], []),
        (["lesion", "wm"], []),  # class 0 is the background, whatever its name
        ([], []),
    ],
)
def test_pocket_classes_are_foreground_classes_named_lesion_or_a_fluid(
    names: list[str], expected: list[int]
) -> None:
    assert POCKET_CLASS_NAMES == ("lesion", "irf", "srf", "ped")
    assert pocket_classes(names) == expected


def test_check_modality_knows_mri_and_oct_only() -> None:
    assert MODALITIES == ("mri", "oct")
    assert [check_modality(m) for m in MODALITIES] == ["mri", "oct"]
    with pytest.raises(ConfigError) as caught:
        check_modality("OCT", name="--modality")
    assert str(caught.value) == (
        "--modality 'OCT' is unknown: use one of mri, oct (mri: brain T1 or FLAIR, oct: "
        "retinal OCT)"
    )
