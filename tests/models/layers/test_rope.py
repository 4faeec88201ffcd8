import math

import pytest
import torch

from polymodal.models.layers.rope import AxialRotaryEmbedding2D, RotaryEmbedding


def rotate_pairs_reference(x: torch.Tensor, angles_per_pair: torch.Tensor, offset: int, span: int) -> torch.Tensor:
    """Rotate dims [offset, offset + span) of x ([T, D]) with rotate-half pairing via complex numbers.

    Pair i couples dims offset + i and offset + i + span/2; angles_per_pair is [T, span/2].
    """
    half = span // 2
    first = x[:, offset : offset + half].double()
    second = x[:, offset + half : offset + span].double()
    rotated = torch.complex(first, second) * torch.exp(1j * angles_per_pair.double())
    out = x.clone().double()
    out[:, offset : offset + half] = rotated.real
    out[:, offset + half : offset + span] = rotated.imag
    return out.float()


def rope_1d_reference(x: torch.Tensor, positions: list[int], theta: float = 10000.0) -> torch.Tensor:
    head_dim = x.shape[-1]
    angles = torch.tensor(
        [[p * theta ** (-2 * i / head_dim) for i in range(head_dim // 2)] for p in positions],
        dtype=torch.float64,
    )
    return rotate_pairs_reference(x, angles, 0, head_dim)


def rope_2d_reference(x: torch.Tensor, rows: list[int], cols: list[int], theta: float = 10000.0) -> torch.Tensor:
    half = x.shape[-1] // 2
    frequencies = [theta ** (-2 * i / half) for i in range(half // 2)]
    row_angles = torch.tensor([[r * f for f in frequencies] for r in rows], dtype=torch.float64)
    col_angles = torch.tensor([[c * f for f in frequencies] for c in cols], dtype=torch.float64)
    return rotate_pairs_reference(rotate_pairs_reference(x, row_angles, 0, half), col_angles, half, half)


def test_rope_1d_matches_complex_reference_default_positions():
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=8, max_seq_len=16)
    q, k = torch.randn(2, 3, 6, 8), torch.randn(2, 1, 6, 8)
    q_rot, k_rot = rope(q, k)
    for b in range(2):
        for h in range(3):
            torch.testing.assert_close(q_rot[b, h], rope_1d_reference(q[b, h], list(range(6))))
        torch.testing.assert_close(k_rot[b, 0], rope_1d_reference(k[b, 0], list(range(6))))


def test_rope_1d_explicit_position_ids():
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=16, max_seq_len=64, theta=500.0)
    q, k = torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16)
    position_ids = torch.tensor([[3, 9, 0, 63, 10], [1, 2, 3, 4, 5]])
    q_rot, k_rot = rope(q, k, position_ids)
    for b in range(2):
        positions = position_ids[b].tolist()
        torch.testing.assert_close(q_rot[b, 1], rope_1d_reference(q[b, 1], positions, theta=500.0))
        torch.testing.assert_close(k_rot[b, 0], rope_1d_reference(k[b, 0], positions, theta=500.0))
    arange_ids = torch.arange(5)[None]
    torch.testing.assert_close(rope(q, k, arange_ids)[0], rope(q, k)[0])


def test_rope_1d_scores_depend_only_on_position_difference():
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=32, max_seq_len=128)
    q_vec, k_vec = torch.randn(32), torch.randn(32)

    def score(m: int, n: int) -> torch.Tensor:
        q = q_vec.expand(1, 1, 2, 32)
        k = k_vec.expand(1, 1, 2, 32)
        q_rot, k_rot = rope(q, k, torch.tensor([[m, n]]))
        return q_rot[0, 0, 0] @ k_rot[0, 0, 1]

    for shift in (1, 17, 90):
        torch.testing.assert_close(score(5, 2), score(5 + shift, 2 + shift), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_rope_2d_non_square_grid_with_prefix_matches_reference():
    torch.manual_seed(0)
    height, width, prefix = 3, 5, 1
    rope = AxialRotaryEmbedding2D(head_dim=16, grid_size=(height, width), num_prefix_tokens=prefix)
    seq_len = prefix + height * width
    assert rope.max_seq_len == seq_len
    q, k = torch.randn(1, 2, seq_len, 16), torch.randn(1, 2, seq_len, 16)
    q_rot, k_rot = rope(q, k)
    rows, cols = [0] * prefix, [0] * prefix
    for row in range(height):
        for col in range(width):
            rows.append(row)
            cols.append(col)
    torch.testing.assert_close(q_rot[0, 0], rope_2d_reference(q[0, 0], rows, cols))
    torch.testing.assert_close(k_rot[0, 1], rope_2d_reference(k[0, 1], rows, cols))
    torch.testing.assert_close(q_rot[0, :, 0], q[0, :, 0])


def test_rope_2d_scores_depend_only_on_grid_offsets():
    torch.manual_seed(0)
    rope = AxialRotaryEmbedding2D(head_dim=16, grid_size=(4, 7))
    q_vec, k_vec = torch.randn(16), torch.randn(16)

    def score(q_cell: tuple[int, int], k_cell: tuple[int, int]) -> torch.Tensor:
        ids = torch.tensor([[q_cell[0] * 7 + q_cell[1], k_cell[0] * 7 + k_cell[1]]])
        q_rot, k_rot = rope(q_vec.expand(1, 1, 2, 16), k_vec.expand(1, 1, 2, 16), ids)
        return q_rot[0, 0, 0] @ k_rot[0, 0, 1]

    torch.testing.assert_close(score((1, 2), (0, 5)), score((3, 3), (2, 6)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score((1, 2), (0, 5)), score((1, 2), (1, 5)))
    assert not torch.allclose(score((0, 1), (0, 0)), score((1, 0), (0, 0)))


def test_rope_keeps_dtype():
    rope = RotaryEmbedding(head_dim=8, max_seq_len=4)
    q = torch.randn(1, 1, 4, 8, dtype=torch.bfloat16)
    q_rot, k_rot = rope(q, q)
    assert q_rot.dtype == k_rot.dtype == torch.bfloat16
    torch.testing.assert_close(
        q_rot.float(), rope_1d_reference(q[0, 0].float(), list(range(4)))[None, None], atol=2e-2, rtol=2e-2
    )


@pytest.mark.parametrize(
    "rope_factory",
    [
        lambda: RotaryEmbedding(head_dim=8, max_seq_len=12, theta=100.0),
        lambda: AxialRotaryEmbedding2D(head_dim=8, grid_size=(2, 3), num_prefix_tokens=2),
    ],
)
def test_reset_parameters_restores_tables_after_meta_to_empty(rope_factory):
    reference = rope_factory()
    with torch.device("meta"):
        rope = rope_factory()
    rope = rope.to_empty(device="cpu")
    rope.reset_parameters()
    torch.testing.assert_close(rope.cos, reference.cos)
    torch.testing.assert_close(rope.sin, reference.sin)
    assert rope.state_dict() == {}


def test_rope_tables_are_exact_at_long_positions():
    rope = RotaryEmbedding(head_dim=4, max_seq_len=40000)
    assert math.isclose(rope.cos[39999, 0].item(), math.cos(39999.0), abs_tol=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: RotaryEmbedding(head_dim=7, max_seq_len=4), "even"),
        (lambda: RotaryEmbedding(head_dim=8, max_seq_len=0), "max_seq_len"),
        (lambda: AxialRotaryEmbedding2D(head_dim=6, grid_size=(2, 2)), "divisible by 4"),
        (lambda: AxialRotaryEmbedding2D(head_dim=8, grid_size=(0, 2)), "grid_size"),
        (
            lambda: AxialRotaryEmbedding2D(head_dim=8, grid_size=(2, 2), num_prefix_tokens=-1),
            "num_prefix_tokens",
        ),
        (lambda: RotaryEmbedding(8, 4)(torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8)), "max_seq_len"),
        (lambda: RotaryEmbedding(8, 4)(torch.randn(1, 1, 3, 6), torch.randn(1, 1, 3, 6)), "head_dim"),
        (
            lambda: RotaryEmbedding(8, 4)(torch.randn(1, 1, 3, 8), torch.randn(1, 1, 3, 8), torch.zeros(3).long()),
            "position_ids",
        ),
    ],
)
def test_rope_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
