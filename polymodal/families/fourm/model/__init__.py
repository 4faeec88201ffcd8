"""4M: the any-to-any masked multimodal encoder-decoder.

Batch contract: ``batch[m] = {"tensor", "is_input", "is_target"}`` for each modality ``m``, with ``tensor`` image
tokens ``[B, N]`` int64, pixels ``[B, C, H, W]`` float, a sequence ``[B, L]`` int64 (PAD = 0) or vectors
``[B, L, E]`` float; ``is_input`` / ``is_target`` ``[B, N|L]`` bool mark the positions given to the encoder and
those the decoder predicts. Vectors may come with ``row_index`` ``[B, L]`` (the masking's layout: which row of
``tensor`` each position holds, -1 for a zero vector), so that they are not copied into position order.
Modalities in the batch but not in the model are ignored.
"""

from polymodal.families.fourm.model.fourm import DecoderQueries, EncoderTokens, FourM
from polymodal.families.fourm.model.sizes import SIZES, VARIANTS, build_fourm
from polymodal.families.fourm.model.vit import (
    ClassificationHead,
    FourMViT,
    FourMViTClassifier,
    build_fourm_vit,
    from_fourm,
    load_fourm_weights,
)

__all__ = [
    "SIZES",
    "VARIANTS",
    "ClassificationHead",
    "DecoderQueries",
    "EncoderTokens",
    "FourM",
    "FourMViT",
    "FourMViTClassifier",
    "build_fourm",
    "build_fourm_vit",
    "from_fourm",
    "load_fourm_weights",
]
