"""The inference graph: one direction as one module, chunked conditioning, static pooling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segrenorm.errors import ConfigError
from segrenorm.models.checkpoint import load_translator
from segrenorm.models.inference import ConditionedGenerator, _pool_matrix


def test_chunked_conditioning_matches_the_translator(tiny_checkpoints: dict[str, Path]) -> None:
    translator, _ = load_translator(tiny_checkpoints["random"])
    x = torch.linspace(-1, 1, 5 * 16 * 20).reshape(5, 1, 16, 20).cos()
    chunked = ConditionedGenerator(translator, "AB", seg_chunk=2)
    with torch.no_grad():
        np.testing.assert_allclose(chunked(x), translator.translate(x, "AB"), atol=1e-6)
    with pytest.raises(ConfigError, match="seg_chunk 0 must be at least 1"):
        ConditionedGenerator(translator, "AB", seg_chunk=0)


@pytest.mark.parametrize(("n_in", "n_out"), [(7, 3), (6, 3), (5, 1), (3, 3), (2, 5)])
def test_pool_matrix_is_adaptive_average_pooling(n_in: int, n_out: int) -> None:
    x = torch.arange(2.0 * n_in).reshape(2, 1, n_in) ** 2
    want = torch.nn.functional.adaptive_avg_pool1d(x, n_out)
    got = torch.matmul(x, _pool_matrix(n_in, n_out).T)
    torch.testing.assert_close(got, want)
    assert torch.allclose(_pool_matrix(n_in, n_out).sum(dim=1), torch.ones(n_out))


def test_a_static_shape_translates_like_the_size_agnostic_graph(
    tiny_checkpoints: dict[str, Path],
) -> None:
    translator, _ = load_translator(tiny_checkpoints["random"])
    x = torch.linspace(-1, 1, 3 * 24 * 40).reshape(3, 1, 24, 40).sin()
    module = ConditionedGenerator(translator, "BA").eval()
    static = module.for_shape((24, 40)).eval()
    assert type(static.extractor).__name__ == "_StaticPoolExtractor"
    with torch.no_grad():
        torch.testing.assert_close(static(x), module(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(module(x), translator.translate(x, "BA"), atol=1e-6, rtol=0)


def test_an_unknown_direction_is_refused(tiny_checkpoints: dict[str, Path]) -> None:
    translator, _ = load_translator(tiny_checkpoints["random"])
    with pytest.raises(ConfigError, match="direction 'AA' is unknown: use 'AB'"):
        ConditionedGenerator(translator, "AA")
