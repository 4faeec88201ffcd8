import math

import pytest
import torch

from polymodal.models.layers.posembed import sincos_1d, sincos_2d


def test_sincos_1d_matches_loops():
    num_positions, dim = 7, 10
    table = sincos_1d(num_positions, dim)
    assert table.shape == (num_positions, dim) and table.dtype == torch.float32
    for position in range(num_positions):
        for i in range(dim // 2):
            angle = position / 10000 ** (i / (dim // 2))
            assert math.isclose(table[position, i].item(), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(table[position, dim // 2 + i].item(), math.cos(angle), abs_tol=1e-6)


def test_sincos_2d_non_square_rows_and_columns():
    grid_h, grid_w, dim = 3, 5, 16
    table = sincos_2d(grid_h, grid_w, dim)
    assert table.shape == (grid_h * grid_w, dim)
    row_table, col_table = sincos_1d(grid_h, dim // 2), sincos_1d(grid_w, dim // 2)
    for row in range(grid_h):
        for col in range(grid_w):
            token = row * grid_w + col
            torch.testing.assert_close(table[token, : dim // 2], row_table[row])
            torch.testing.assert_close(table[token, dim // 2 :], col_table[col])


@pytest.mark.parametrize(
    "call",
    [
        lambda: sincos_1d(0, 8),
        lambda: sincos_1d(4, 7),
        lambda: sincos_2d(2, 2, 6),
        lambda: sincos_2d(0, 2, 8),
    ],
)
def test_sincos_rejects_bad_sizes(call):
    with pytest.raises(ValueError):
        call()
