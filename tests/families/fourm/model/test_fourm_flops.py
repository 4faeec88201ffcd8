"""FourM training FLOPs: the analytic count against torch's FlopCounterMode on a tiny model (forward + backward)."""

import pytest
from fourm_test_batches import random_batch, tiny_fourm, tiny_registry
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from polymodal.families.fourm.loss import FourMLoss
from polymodal.families.fourm.model.flops import FourMMatmuls, fourm_train_flops

BATCH = 4


def counted_train_flops(model, batch) -> tuple[int, dict]:
    """FLOPs torch counts for one forward + backward (math attention: the fused CPU kernel is not counted)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        output = model(batch)
        loss, _ = FourMLoss()(output)
        loss.backward()
    return counter.get_total_flops(), output


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"num_encoder_tokens": 20, "num_decoder_tokens": 12},  # selection cuts both sequences
        {"num_register_tokens": 3, "mlp": "gelu", "qkv_bias": True},
    ],
)
def test_analytic_flops_match_the_flop_counter(settings):
    model = tiny_fourm(dim=64, **settings)
    batch = random_batch(tiny_registry(), batch=BATCH, seed=3)
    counted, output = counted_train_flops(model, batch)
    analytic = model.train_flops(output)
    assert analytic == pytest.approx(counted, rel=0.03)


def test_flops_count_the_sequence_lengths_the_model_runs():
    model = tiny_fourm(dim=64)
    batch = random_batch(tiny_registry(), batch=BATCH, seed=1)
    output = model(batch)
    encoder_positions = 16 + 16 + 14  # rgb@32 patches, tok_rgb@32 grid, caption row (2 * (6 + 1))
    decoder_positions = 16 + 13  # tok_rgb@32 grid, caption row shifted by one
    expected = fourm_train_flops(
        FourMMatmuls.of(model),
        BATCH,
        encoder_positions,
        decoder_positions,
        head_rows={name: rows.numel() for name, rows in output["targets"].items()},
        projected_positions={"rgb@32": 16},
    )
    assert model.train_flops(output) == expected


def test_flops_formula_by_hand():
    matmuls = FourMMatmuls(
        dim=8,
        encoder_depth=2,
        decoder_depth=3,
        encoder=100,
        context=30,
        decoder=200,
        input_projections={"rgb": 12},
        vocab_sizes={"tok": 5, "caption": 7},
    )
    n, m = 10, 4
    per_sample = (
        n * (6 * 100 + 12 * 2 * 8 * n) + 6 * 30 * n + m * (6 * 200 + 12 * 3 * 8 * m) + 12 * 3 * 8 * m * n + 6 * 12 * 16
    )
    heads = 6 * 8 * (5 * 9 + 7 * 2)
    flops = fourm_train_flops(matmuls, 2, n, m, {"tok": 9, "caption": 2}, {"rgb": 16})
    assert flops == 2 * per_sample + heads


def test_matmuls_split_the_decoder_by_what_each_weight_multiplies():
    model = tiny_fourm(dim=64)
    matmuls = FourMMatmuls.of(model)
    dim, hidden = 64, int(2 * 4 * 64 / 3)
    assert matmuls.encoder == 2 * (4 * dim * dim + 3 * dim * hidden)
    assert matmuls.context == dim * dim + 2 * (2 * dim * dim)
    assert matmuls.decoder == 2 * (6 * dim * dim + 3 * dim * hidden)
    assert matmuls.input_projections == {"rgb@32": 3 * 8 * 8 * dim}
    assert matmuls.vocab_sizes == {"tok_rgb@32": 40, "caption": 50}


def test_bad_input_is_a_clear_error():
    model = tiny_fourm()
    batch = random_batch(tiny_registry(), batch=2)
    with pytest.raises(ValueError, match="after the forward pass"):
        model.train_flops(batch)
    with pytest.raises(ValueError, match=r"head_rows names \['depth'\]"):
        fourm_train_flops(model.matmuls, 2, 4, 4, {"depth": 3})
    with pytest.raises(ValueError, match="encoder_tokens"):
        fourm_train_flops(model.matmuls, 2, -1, 4, {})
