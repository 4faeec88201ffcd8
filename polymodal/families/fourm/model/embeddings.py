"""Per-modality embeddings and output heads of 4M.

Every embedding returns the content embedding ``x`` and, separately, ``emb`` = position + modality embedding: the
encoder input is ``x + emb``, and the decoder re-adds the encoder's ``emb`` to its context.

* The modality embedding is one learned ``(1, 1, D)`` vector per modality; a decoder embedding takes the encoder
  embedding's Parameter (``mod_emb=``) so both sides share it.
* Positions are fixed sin-cos tables (2D over the token grid for images, 1D for sequences), or learned when
  ``spec.sincos_pos_emb`` is False. Sin-cos tables are non-persistent buffers: they are recomputed by
  :meth:`reset_parameters`, so they do not bloat checkpoints and survive meta-device initialisation.
* A sequence table has one row per position of the modality's batch row (``spec.num_positions()``): encoder
  positions count the input tokens (``cumsum(is_input) - 1``) and decoder positions the target tokens
  (``cumsum(is_target) - 1``), and neither count can exceed the row length. (Upstream always allocates 512 rows
  whatever ``max_length``; we size the table to what the row can use.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.families.fourm.modalities import ModalitySpec
from polymodal.models.layers.patch_embed import PatchEmbed
from polymodal.models.layers.posembed import sincos_1d, sincos_2d

INIT_STD = 0.02
PAD_ID = 0


def sincos_table(spec: ModalitySpec, dim: int) -> Tensor:
    """``[num_positions, dim]`` fixed embedding of the modality's positions: 2D grid or 1D sequence."""
    if spec.is_image:
        return sincos_2d(*spec.grid, dim)
    return sincos_1d(spec.num_positions(), dim)


class ModalityEmbedding(nn.Module):
    """The position table and modality embedding of one modality (base of every encoder/decoder embedding).

    Args:
        spec: the modality.
        dim: model width.
        mod_emb: an existing modality embedding to share (the encoder's), else a new one is made.
    """

    def __init__(self, spec: ModalitySpec, dim: int, mod_emb: nn.Parameter | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.dim = dim
        self.mod_emb = mod_emb if mod_emb is not None else nn.Parameter(torch.empty(1, 1, dim))
        num_positions = spec.num_positions()
        if spec.sincos_pos_emb:
            self.register_buffer("pos_emb", torch.empty(1, num_positions, dim), persistent=False)
        else:
            self.pos_emb = nn.Parameter(torch.empty(1, num_positions, dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, 0.02) for the modality (and learned position) embeddings; recompute sin-cos tables."""
        nn.init.normal_(self.mod_emb, std=INIT_STD)
        if self.spec.sincos_pos_emb:
            self.pos_emb.copy_(sincos_table(self.spec, self.dim)[None])
        else:
            nn.init.normal_(self.pos_emb, std=INIT_STD)

    def grid_emb(self, batch: int) -> Tensor:
        """``[B, N, D]`` position + modality embedding of every grid position."""
        return (self.pos_emb + self.mod_emb).expand(batch, -1, -1)

    def counted_emb(self, selected: Tensor) -> Tensor:
        """``[B, L, D]`` embedding of a sequence row whose ``selected`` positions are numbered 0, 1, 2, ...

        Unselected positions get the embedding of position 0; callers drop them (they are padding).
        """
        length = selected.shape[1]
        if length > self.pos_emb.shape[1]:
            raise ValueError(
                f"modality {self.spec.name!r}: row of {length} positions, longer than its {self.pos_emb.shape[1]} "
                "position embeddings (spec.num_positions())"
            )
        position_ids = (selected.long().cumsum(dim=1) - 1).clamp(min=0)
        return self.pos_emb[0][position_ids] + self.mod_emb

    def check_tokens(self, tensor: Tensor, what: str) -> Tensor:
        """``tensor`` as ``[B, N]`` integer ids with N this image's grid size, or a ValueError naming the modality."""
        if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
            raise ValueError(f"modality {self.spec.name!r}: {what} must be integer token ids, got {tensor.dtype}")
        ids = tensor.reshape(tensor.shape[0], -1)
        if self.spec.is_image and ids.shape[1] != self.pos_emb.shape[1]:
            raise ValueError(
                f"modality {self.spec.name!r}: {ids.shape[1]} tokens per sample, expected the "
                f"{self.pos_emb.shape[1]} of its {self.spec.grid} grid"
            )
        return ids


class ImageTokenEncoderEmbedding(ModalityEmbedding):
    """Image token grid ``[B, N]`` (or ``[B, H, W]``) -> ``token_emb`` rows; every position gets its grid emb."""

    def __init__(self, spec: ModalitySpec, dim: int) -> None:
        super().__init__(spec, dim)
        self.token_emb = nn.Embedding(spec.vocab_size, dim)

    def forward(self, tensor: Tensor, is_input: Tensor) -> tuple[Tensor, Tensor]:
        ids = self.check_tokens(tensor, "tensor")
        return self.token_emb(ids), self.grid_emb(ids.shape[0])


class ImagePatchEncoderEmbedding(ModalityEmbedding):
    """Pixels ``[B, C, H, W]`` -> the engine's :class:`PatchEmbed` (patches flattened in ``(ph, pw, c)`` order, a
    Linear without bias, so the modality identity comes from ``mod_emb`` alone) as ``proj``."""

    def __init__(self, spec: ModalitySpec, dim: int) -> None:
        super().__init__(spec, dim)
        self.proj = PatchEmbed(spec.patch_size, spec.num_channels, dim, bias=False)

    def forward(self, tensor: Tensor, is_input: Tensor) -> tuple[Tensor, Tensor]:
        spec = self.spec
        expected = (spec.num_channels, spec.resolution, spec.resolution)
        if tensor.dim() != 4 or tuple(tensor.shape[1:]) != expected:
            raise ValueError(f"modality {spec.name!r}: pixels must be [B, {', '.join(map(str, expected))}], "
                             f"got {tuple(tensor.shape)}")  # fmt: skip
        return self.proj(tensor), self.grid_emb(tensor.shape[0])


class SequenceEncoderEmbedding(ModalityEmbedding):
    """Token sequence ``[B, L]`` (PAD = 0) -> ``token_emb``; input positions numbered by ``cumsum(is_input) - 1``."""

    def __init__(self, spec: ModalitySpec, dim: int) -> None:
        super().__init__(spec, dim)
        self.token_emb = nn.Embedding(spec.vocab_size, dim, padding_idx=PAD_ID)

    def forward(self, tensor: Tensor, is_input: Tensor) -> tuple[Tensor, Tensor]:
        return self.token_emb(self.check_tokens(tensor, "tensor")), self.counted_emb(is_input)


class SequenceVectorEncoderEmbedding(ModalityEmbedding):
    """Precomputed vectors ``[B, L, E]`` (``seq_emb``, e.g. T5 caption states) -> ``proj``; positions as sequences.

    With ``row_index`` ``[B, P]`` (the masking's layout, module :mod:`polymodal.families.fourm.masking.masker`),
    position p holds row ``row_index[:, p]`` of the vectors, or a zero vector where it is -1: the wide vectors are
    projected as they come and the narrow result is indexed, instead of laying out a ``[B, P, E]`` copy."""

    def __init__(self, spec: ModalitySpec, dim: int) -> None:
        super().__init__(spec, dim)
        self.proj = nn.Linear(spec.embedding_dim, dim)

    def forward(self, tensor: Tensor, is_input: Tensor, row_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if tensor.dim() != 3 or tensor.shape[-1] != self.spec.embedding_dim:
            raise ValueError(f"modality {self.spec.name!r}: vectors must be [B, L, {self.spec.embedding_dim}], "
                             f"got {tuple(tensor.shape)}")  # fmt: skip
        x = self.proj(tensor)
        if row_index is not None:
            rows = x.gather(1, row_index.clamp(min=0)[..., None].expand(-1, -1, x.shape[-1]))
            x = torch.where((row_index >= 0)[..., None], rows, self.proj(tensor.new_zeros(tensor.shape[-1])))
        return x, self.counted_emb(is_input)


class ImageTokenDecoderEmbedding(ModalityEmbedding):
    """Image targets: no content embedding (the model queries every target with its one mask token), grid
    embedding, each position predicts its own code with ``to_logits``."""

    def __init__(self, spec: ModalitySpec, dim: int, mod_emb: nn.Parameter | None = None) -> None:
        super().__init__(spec, dim, mod_emb)
        self.to_logits = nn.Linear(dim, spec.vocab_size, bias=False)

    def forward(self, tensor: Tensor, is_target: Tensor) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """``(None, emb, valid, target_ids)``: ``valid`` marks the positions that are predicted."""
        ids = self.check_tokens(tensor, "tensor")
        return None, self.grid_emb(ids.shape[0]), is_target, ids


class SequenceDecoderEmbedding(ModalityEmbedding):
    """Sequence targets, teacher-forced with a one-token shift: decoder position i holds token i (embedded by
    ``token_emb``) and predicts token i + 1; it is valid iff positions i and i + 1 are both targets. Positions are
    ``cumsum(is_target) - 1``, so the opening sentinel is position 0 and is never itself predicted.

    ``tie_embeddings`` makes ``to_logits.weight`` the ``token_emb.weight`` Parameter.
    """

    def __init__(
        self, spec: ModalitySpec, dim: int, mod_emb: nn.Parameter | None = None, tie_embeddings: bool = True
    ) -> None:
        super().__init__(spec, dim, mod_emb)
        self.token_emb = nn.Embedding(spec.vocab_size, dim, padding_idx=PAD_ID)
        self.to_logits = nn.Linear(dim, spec.vocab_size, bias=False)
        if tie_embeddings:
            self.to_logits.weight = self.token_emb.weight

    def forward(self, tensor: Tensor, is_target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x, emb, valid, target_ids)`` over the ``L - 1`` shifted positions."""
        ids = self.check_tokens(tensor, "tensor")
        emb = self.counted_emb(is_target)
        valid = is_target[:, :-1] & is_target[:, 1:]
        return self.token_emb(ids[:, :-1]), emb[:, :-1], valid, ids[:, 1:]


def encoder_embedding(spec: ModalitySpec, dim: int) -> ModalityEmbedding:
    """The encoder embedding for ``spec``'s kind."""
    if spec.is_pixels:
        return ImagePatchEncoderEmbedding(spec, dim)
    if spec.is_image:
        return ImageTokenEncoderEmbedding(spec, dim)
    if spec.kind == "seq_emb":
        return SequenceVectorEncoderEmbedding(spec, dim)
    return SequenceEncoderEmbedding(spec, dim)


def decoder_embedding(
    spec: ModalitySpec, dim: int, mod_emb: nn.Parameter | None, tie_embeddings: bool
) -> ModalityEmbedding:
    """The decoder embedding + head for ``spec``'s kind (image heads have no token table to tie to)."""
    if spec.is_pixels or spec.kind == "seq_emb":
        raise ValueError(f"modality {spec.name!r}: a {spec.kind} without a vocabulary cannot be a decoder target")
    if spec.is_image:
        return ImageTokenDecoderEmbedding(spec, dim, mod_emb)
    return SequenceDecoderEmbedding(spec, dim, mod_emb, tie_embeddings)
