"""VQ and FSQ quantizers against brute-force reference computations."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from parallel_runs import spawn_gloo

from polymodal.tokenizers.image.quantizers import FSQ, QuantizerOutput, VectorQuantizer, codebook_perplexity


def grid(flat: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """[N, dim] rows -> [B, dim, h, w] latent, row order = (b, y, x)."""
    return flat.view(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()


def rows(latent: torch.Tensor) -> torch.Tensor:
    return latent.permute(0, 2, 3, 1).reshape(-1, latent.shape[1])


# --- VectorQuantizer -------------------------------------------------------------------------------


@pytest.mark.parametrize("l2_normalize", [True, False])
def test_nearest_code_equals_brute_force_argmin(l2_normalize):
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=6, codebook_size=37, l2_normalize=l2_normalize).eval()
    z = torch.randn(3, 6, 5, 4)
    out = vq(z)
    assert isinstance(out, QuantizerOutput)
    assert out.codes.shape == (3, 5, 4) and out.codes.dtype == torch.long

    codebook, latents = vq.embedding, rows(z)
    expected = []
    for latent in latents:
        if l2_normalize:
            distances = [1 - F.cosine_similarity(latent, code, dim=0) for code in codebook]
        else:
            distances = [((latent - code) ** 2).sum() for code in codebook]
        expected.append(int(torch.stack(distances).argmin()))
    assert out.codes.flatten().tolist() == expected

    expected_vectors = F.normalize(codebook, dim=1) if l2_normalize else codebook
    torch.testing.assert_close(rows(out.latent), expected_vectors[torch.tensor(expected)])
    torch.testing.assert_close(vq.codes_to_latent(out.codes), out.latent)
    assert out.usage.tolist() == torch.bincount(torch.tensor(expected), minlength=37).float().tolist()


@pytest.mark.parametrize("ema_decay", [0.99, None])
def test_straight_through_gradient_is_identity(ema_decay):
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=4, codebook_size=8, ema_decay=ema_decay)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3)
    (vq(z).latent * upstream).sum().backward()
    torch.testing.assert_close(z.grad, upstream, rtol=0, atol=0)


def test_losses_match_commitment_and_codebook_formulas():
    torch.manual_seed(0)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    learned = VectorQuantizer(dim=4, codebook_size=8, ema_decay=None, commitment=0.3).eval()
    out = learned(z)
    latents = F.normalize(rows(z.detach()), dim=1)
    quantized = F.normalize(learned.embedding.detach(), dim=1)[out.codes.flatten()]
    mse = ((latents - quantized) ** 2).mean()
    torch.testing.assert_close(out.loss, 1.3 * mse)
    out.loss.backward()
    assert learned.embedding.grad is not None and learned.embedding.grad.abs().sum() > 0

    ema = VectorQuantizer(dim=4, codebook_size=8, ema_decay=0.9, commitment=0.3).eval()
    out = ema(z)
    quantized = F.normalize(ema.embedding, dim=1)[out.codes.flatten()]
    torch.testing.assert_close(out.loss, 0.3 * ((latents - quantized) ** 2).mean())


@pytest.mark.parametrize("l2_normalize", [True, False])
def test_ema_update_follows_the_formula_on_a_hand_made_batch(l2_normalize):
    decay = 0.9
    vq = VectorQuantizer(dim=2, codebook_size=3, l2_normalize=l2_normalize, ema_decay=decay, dead_code_threshold=0)
    initial = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    vq.embedding.copy_(initial)
    vq.ema_sum.copy_(initial)
    # Two latents near code 0, one near code 1, none near code 2.
    batch = torch.tensor([[2.0, 0.2], [1.0, -0.1], [0.1, 3.0]])
    out = vq.train()(grid(batch, 1, 1, 3))
    assert out.codes.flatten().tolist() == [0, 0, 1]

    latents = F.normalize(batch, dim=1) if l2_normalize else batch
    counts = torch.tensor([2.0, 1.0, 0.0])
    sums = torch.stack([latents[0] + latents[1], latents[2], torch.zeros(2)])
    expected_count = decay * torch.ones(3) + (1 - decay) * counts
    expected_sum = decay * initial + (1 - decay) * sums
    torch.testing.assert_close(vq.ema_count, expected_count)
    torch.testing.assert_close(vq.ema_sum, expected_sum)
    torch.testing.assert_close(vq.embedding, expected_sum / expected_count[:, None])
    # The unused code keeps its direction.
    torch.testing.assert_close(F.normalize(vq.embedding[2], dim=0), initial[2])


def test_eval_mode_leaves_the_codebook_unchanged():
    vq = VectorQuantizer(dim=3, codebook_size=16).eval()
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(2, 3, 4, 4))
    for key, value in vq.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("ema_decay", [0.99, None])
def test_dead_codes_are_restarted_from_batch_latents(ema_decay):
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=3, codebook_size=6, ema_decay=ema_decay, dead_code_threshold=1.0)
    with torch.no_grad():
        vq.embedding.copy_(torch.eye(3).repeat(2, 1) * torch.tensor([[1.0], [1.0], [1.0], [-1.0], [-1.0], [-1.0]]))
        if ema_decay is not None:
            vq.ema_sum.copy_(vq.embedding)
    # Every latent points near +x, so only code 0 is used; codes 1..5 fall below the threshold.
    batch = torch.tensor([1.0, 0.0, 0.0]) + 0.1 * torch.randn(20, 3)
    vq.train()(grid(batch, 2, 2, 5))

    latents = F.normalize(batch, dim=1)
    restarted = vq.embedding.detach()[1:]
    for code in restarted:
        assert any(torch.allclose(code, latent) for latent in latents), code
    assert len({tuple(code.tolist()) for code in restarted}) == 5  # sampled without replacement
    assert vq.ema_count[1:].tolist() == [1.0] * 5
    if ema_decay is not None:
        torch.testing.assert_close(vq.ema_sum[1:], restarted)
    # Code 0 was used by every latent: it is not restarted and keeps pointing along +x.
    assert F.normalize(vq.embedding.detach()[0], dim=0)[0] > 0.99


def test_restart_is_deterministic_given_the_torch_seed():
    codebooks = []
    for _ in range(2):
        torch.manual_seed(3)
        vq = VectorQuantizer(dim=2, codebook_size=8)
        vq.train()(torch.randn(1, 2, 2, 2))
        codebooks.append(vq.embedding.clone())
    assert torch.equal(*codebooks)


CLUSTERS = 16
# Cluster centres on a quarter circle: a random codebook mostly misses them, so without dead-code
# restarts most codes are never used.
CENTRES = 3 * torch.stack(
    [
        torch.cos(torch.arange(CLUSTERS) * math.pi / 2 / CLUSTERS),
        torch.sin(torch.arange(CLUSTERS) * math.pi / 2 / CLUSTERS),
    ],
    dim=1,
)
CENTRE_SPACING = 3 * 2 * math.sin(math.pi / 4 / CLUSTERS)


def gaussian_clusters(n: int) -> torch.Tensor:
    points = CENTRES[torch.randint(CLUSTERS, (n,))] + 0.05 * torch.randn(n, 2)
    return grid(points, n // 64, 8, 8)


def fit_clusters(l2_normalize: bool, ema_decay: float | None, dead_code_threshold: float):
    torch.manual_seed(0)
    vq = VectorQuantizer(
        dim=2,
        codebook_size=CLUSTERS,
        l2_normalize=l2_normalize,
        ema_decay=ema_decay,
        dead_code_threshold=dead_code_threshold,
    )
    optimizer = torch.optim.Adam(vq.parameters(), lr=0.05) if ema_decay is None else None
    for _ in range(60):
        out = vq.train()(gaussian_clusters(256))
        if optimizer is not None:
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
    data = gaussian_clusters(2048)
    return vq.eval()(data), data


@pytest.mark.parametrize("l2_normalize", [True, False])
@pytest.mark.parametrize("ema_decay", [0.95, None])
def test_training_on_gaussian_clusters_uses_the_whole_codebook(l2_normalize, ema_decay):
    out, data = fit_clusters(l2_normalize, ema_decay, dead_code_threshold=1.0)
    assert int((out.usage > 0).sum()) >= CLUSTERS - 1
    assert codebook_perplexity(out.usage) > 0.85 * CLUSTERS
    # Points are quantized much closer than the spacing between neighbouring clusters.
    target = F.normalize(rows(data), dim=1) if l2_normalize else rows(data)
    spacing = CENTRE_SPACING / 3 if l2_normalize else CENTRE_SPACING
    assert (rows(out.latent) - target).norm(dim=1).mean() < 0.3 * spacing

    collapsed, _ = fit_clusters(l2_normalize, ema_decay, dead_code_threshold=0.0)
    assert codebook_perplexity(collapsed.usage) < 0.5 * CLUSTERS


def test_vector_quantizer_rejects_bad_input():
    vq = VectorQuantizer(dim=4, codebook_size=8)
    with pytest.raises(ValueError, match=r"\[B, 4, h, w\]"):
        vq(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="floating-point"):
        vq(torch.ones(2, 4, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        vq.codes_to_latent(torch.full((1, 2, 2), 8))
    with pytest.raises(ValueError, match="integer codes"):
        vq.codes_to_latent(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="ema_decay"):
        VectorQuantizer(dim=4, codebook_size=8, ema_decay=1.0)
    with pytest.raises(ValueError, match="dead_code_threshold"):
        VectorQuantizer(dim=4, codebook_size=8, dead_code_threshold=-1)


# --- distributed EMA sync (2 real processes, gloo) -------------------------------------------------


def rank_batch(rank: int, step: int) -> torch.Tensor:
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(10 * step + rank))


def make_quantizer(dead_code_threshold: float) -> VectorQuantizer:
    torch.manual_seed(0)
    return VectorQuantizer(dim=3, codebook_size=24, dead_code_threshold=dead_code_threshold).train()


def distributed_worker(rank: int, _world: int) -> dict[float, dict[str, torch.Tensor]]:
    """This rank's quantizer state after three synced steps, per dead-code threshold."""
    states = {}
    for threshold in (0.0, 1.0):
        vq = make_quantizer(threshold)
        torch.manual_seed(100 + rank)  # different restart samples per rank: rank 0's must win
        for step in range(3):
            vq(rank_batch(rank, step))
        states[threshold] = {k: v.clone() for k, v in vq.state_dict().items()}
    return states


def test_distributed_ranks_keep_identical_codebooks_equal_to_the_full_batch_ema():
    results = spawn_gloo(distributed_worker, 2)
    for threshold in (0.0, 1.0):
        for key, value in results[0][threshold].items():
            assert torch.equal(value, results[1][threshold][key]), (threshold, key)
    assert not torch.equal(results[0][1.0]["embedding"], results[0][0.0]["embedding"])  # restarts happened

    # The synced EMA equals one process seeing both ranks' batches.
    single = make_quantizer(0.0)
    for step in range(3):
        single(torch.cat([rank_batch(0, step), rank_batch(1, step)]))
    for key, value in single.state_dict().items():
        torch.testing.assert_close(results[0][0.0][key], value)


# --- FSQ -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [2, 3], [7], [4, 4, 2]])
def test_fsq_every_code_is_reachable_and_round_trips_exactly(levels):
    fsq = FSQ(levels)
    assert fsq.dim == len(levels)
    assert fsq.codebook_size == math.prod(levels)

    all_codes = torch.arange(fsq.codebook_size).view(1, 1, -1)
    latent = fsq.codes_to_latent(all_codes)
    assert latent.shape == (1, len(levels), 1, fsq.codebook_size)
    # Every code is a distinct point of the level grid in [-1, 1].
    points = {tuple(p) for p in rows(latent).tolist()}
    assert len(points) == fsq.codebook_size
    assert latent.min() >= -1 and latent.max() <= 1

    # Invert the bound: the preimage of each grid point quantizes back to the same code and latent.
    levels_t = torch.tensor(levels, dtype=torch.float64)
    level_values = rows(latent).double() * (levels_t // 2)
    offset = (levels_t % 2 == 0).double() * 0.5
    half_range = (levels_t - 1) / 2 + 1e-3
    preimage = torch.atanh((level_values + offset) / half_range) - torch.atanh(offset / half_range)
    out = fsq(grid(preimage.float(), 1, 1, fsq.codebook_size))
    assert torch.equal(out.codes, all_codes)
    assert torch.equal(out.latent, latent)
    assert torch.equal(fsq.codes_to_latent(out.codes), out.latent)
    assert out.usage.tolist() == [1.0] * fsq.codebook_size
    assert out.loss.item() == 0.0


def test_fsq_codes_are_the_mixed_radix_number_of_rounded_levels():
    levels = [8, 5, 3]
    fsq = FSQ(levels)
    z = 3 * torch.randn(4, 3, 6, 6)
    out = fsq(z)
    for b, y, x in itertools.product(range(4), range(6), range(6)):
        digits = []
        for channel, level in enumerate(levels):
            half_width = level // 2
            shift = 0.5 if level % 2 == 0 else 0.0
            half_range = (level - 1) / 2 + 1e-3
            bounded = math.tanh(z[b, channel, y, x].item() + math.atanh(shift / half_range)) * half_range - shift
            rounded = round(bounded)
            assert -half_width <= rounded <= level - 1 - half_width
            assert out.latent[b, channel, y, x].item() == pytest.approx(rounded / half_width)
            digits.append(rounded + half_width)
        assert out.codes[b, y, x].item() == digits[0] + 8 * digits[1] + 40 * digits[2]
    # Random inputs of large scale hit every code.
    many = fsq(4 * torch.randn(64, 3, 32, 32))
    assert int((many.usage > 0).sum()) == fsq.codebook_size


def test_fsq_gradient_is_straight_through_the_rounding():
    fsq = FSQ([8, 5])
    z = torch.randn(2, 2, 3, 3, requires_grad=True)
    upstream = torch.randn(2, 2, 3, 3)
    (fsq(z).latent * upstream).sum().backward()
    levels = torch.tensor([8.0, 5.0]).view(1, 2, 1, 1)
    offset = torch.tensor([0.5, 0.0]).view(1, 2, 1, 1)
    half_range = (levels - 1) / 2 + 1e-3
    derivative = (1 - torch.tanh(z.detach() + torch.atanh(offset / half_range)) ** 2) * half_range / (levels // 2)
    torch.testing.assert_close(z.grad, upstream * derivative)


def test_fsq_rejects_bad_input():
    with pytest.raises(ValueError, match="levels"):
        FSQ([])
    with pytest.raises(ValueError, match="levels"):
        FSQ([8, 1])
    fsq = FSQ([8, 5, 5, 5])
    with pytest.raises(ValueError, match=r"\[B, 4, h, w\]"):
        fsq(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        fsq.codes_to_latent(torch.tensor([[[1000]]]))
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        fsq.codes_to_latent(torch.tensor([1, 2]))


# --- perplexity ------------------------------------------------------------------------------------


def test_perplexity_of_uniform_usage_is_the_codebook_size_and_of_one_code_is_one():
    assert codebook_perplexity(torch.full((128,), 3.0)).item() == pytest.approx(128)
    assert codebook_perplexity(torch.tensor([0.0, 5.0, 0.0])).item() == pytest.approx(1.0)
    usage = torch.tensor([1.0, 3.0, 0.0, 4.0])
    p = usage[usage > 0] / usage.sum()
    assert codebook_perplexity(usage).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))


def test_perplexity_rejects_bad_usage():
    with pytest.raises(ValueError, match="sum to zero"):
        codebook_perplexity(torch.zeros(4))
    with pytest.raises(ValueError, match="non-negative"):
        codebook_perplexity(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="1-D"):
        codebook_perplexity(torch.ones(2, 2))


@pytest.mark.parametrize("make", [lambda: VectorQuantizer(dim=4, codebook_size=16), lambda: FSQ([5, 4, 3])])
def test_assignment_space_puts_every_position_nearest_its_own_code(make):
    quantizer = make().eval()
    z = torch.randn(2, quantizer.dim, 3, 3, generator=torch.Generator().manual_seed(0))
    codes = quantizer(z).codes
    space = quantizer.assignment_space(z).movedim(1, -1).reshape(-1, 1, quantizer.dim)
    every_code = torch.arange(quantizer.codebook_size).view(-1, 1, 1)
    all_latents = quantizer.codes_to_latent(every_code).flatten(1)  # [codebook_size, dim]
    nearest = (space - all_latents[None]).square().sum(-1).argmin(dim=1)
    assert torch.equal(nearest, codes.flatten())
