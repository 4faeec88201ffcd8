"""The family's autoregressive sampler: an image of a requested size with classifier-free guidance, or text, as the
assistant turn that answers a prompt (:mod:`polymodal.families.lumina.generate.prompts`).

**Images** (:meth:`ImageTextSampler.images`). The turn is forced to be one image block of ``rows x columns`` codes,
then ``<|eot|>``::

    <|boi|> <|h_rows|> <|w_columns|>  (columns codes <|eor|>) x rows  <|eoi|> <|eot|>

Every token but the codes is known in advance, so it is fed to the model rather than sampled (together with the
code before it, in one forward); each code is drawn among the image codes only. Every block therefore parses
(:func:`~polymodal.families.lumina.vocabulary.parse_image_block`). Upstream (Lumina-mGPT) leaves the size tokens
to the model; here they are the size asked for.

**Classifier-free guidance**, inside the image after its size tokens (as upstream). A row's unconditional branch is
its turn without the prompt: ``<|boi|> <|h|> <|w|>`` and the codes so far (no ``<|bos|>``, no text). Both branches
run in one batch ``[cond; uncond]`` (rows of different lengths left-padded, see
:class:`~polymodal.models.decoding.IncrementalDecoder`) and mix on log-probabilities as upstream:
``g · (cond − uncond) + uncond``. Upstream ran the unconditional branch as a second, unbatched forward with its
own cache. A scale of 1 skips the branch.

**Text** (:meth:`ImageTextSampler.text`, e.g. captions): each token is drawn among the text tokens and
``<|eot|>``, until every row has ended its turn or ``max_new_tokens`` are drawn.

The logits are processed in upstream's order: guidance, the allowed tokens, top-k (``image_top_k`` for codes,
``text_top_k`` for text), top-p, temperature (:func:`~polymodal.models.sampling.sample_tokens`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from polymodal.families.lumina.generate.settings import SamplingSettings
from polymodal.families.lumina.vocabulary import VocabularyLayout, image_block
from polymodal.models.decoding import IncrementalDecoder
from polymodal.models.sampling import sample_tokens
from polymodal.tokenizers.text.bpe import SPECIAL_TOKENS

FIRST_TEXT_ID = len(SPECIAL_TOKENS)


def image_turn(rows: int, columns: int, layout: VocabularyLayout) -> tuple[np.ndarray, np.ndarray]:
    """The assistant turn of an image answer with every code 0 — the block of ``rows x columns`` codes, then
    ``<|eot|>`` — and the mask of its code positions: every other token is fixed."""
    turn = np.append(image_block(np.zeros((rows, columns), dtype=np.int64), layout), layout.end_of_turn)
    return turn, layout.is_image_code(turn)


def classifier_free_guidance(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """``scale · (cond − uncond) + uncond`` on log-probabilities (1: the conditional ones, 0: the unconditional)."""
    cond, uncond = cond.float().log_softmax(-1), uncond.float().log_softmax(-1)
    return scale * (cond - uncond) + uncond


class GuidedDecoder:
    """Next-token logits of conditional rows guided by their unconditional rows, both decoded with one cache in one
    batch ``[cond; uncond]``; without unconditional rows, the conditional logits as they are."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        self.decoder = IncrementalDecoder(model)
        self.scale = scale
        self.guided = False

    def prefill(self, cond: Sequence[Tensor], uncond: Sequence[Tensor] | None, room: int) -> Tensor:
        if uncond is not None and len(uncond) != len(cond):
            raise ValueError(f"{len(cond)} conditional rows but {len(uncond)} unconditional ones")
        self.guided = uncond is not None
        return self._mixed(self.decoder.prefill([*cond, *(uncond or [])], room))

    def extend(self, tokens: Tensor) -> Tensor:
        """Append ``tokens`` (``[B, T]``) to the conditional rows and to their unconditional rows alike."""
        return self._mixed(self.decoder.extend(tokens.repeat(2, 1) if self.guided else tokens))

    def _mixed(self, logits: Tensor) -> Tensor:
        if not self.guided:
            return logits
        cond, uncond = logits.chunk(2)
        return classifier_free_guidance(cond, uncond, self.scale)


class ImageTextSampler:
    """Assistant turns of a model of this family (a causal LM over ``layout``'s vocabulary, see the module
    docstring), on the model's device. ``text_vocab_size`` is the text tokenizer's own size when it is smaller than
    the layout's: text ids above it were never trained and are never drawn."""

    def __init__(
        self,
        model: nn.Module,
        layout: VocabularyLayout,
        settings: SamplingSettings | None = None,
        text_vocab_size: int | None = None,
    ) -> None:
        self.model = model
        self.layout = layout
        self.settings = settings or SamplingSettings()
        self.device = next(model.parameters()).device
        ids = torch.arange(layout.vocab_size, device=self.device)
        self.image_codes = ids >= layout.image_offset
        text_end = min(text_vocab_size or layout.text_vocab_size, layout.text_vocab_size)
        self.text_tokens = ((ids >= FIRST_TEXT_ID) & (ids < text_end)) | (ids == layout.end_of_turn)

    def _rows(self, rows: Sequence[Sequence[int] | np.ndarray]) -> list[Tensor]:
        return [torch.as_tensor(np.asarray(row), dtype=torch.long, device=self.device) for row in rows]

    def _draw(self, logits: Tensor, allowed: Tensor, top_k: int, generator: torch.Generator) -> Tensor:
        logits = logits.masked_fill(~allowed, -math.inf)
        return sample_tokens(logits, self.settings.temperature, generator, top_k, self.settings.top_p)[0]

    @torch.no_grad()
    def images(self, prompts: Sequence[Sequence[int]], rows: int, columns: int, generator: torch.Generator) -> Tensor:
        """The image answer to each prompt (a human turn, ``<|bos|> .. <|eot|>``): ``[B, 5 + rows · (columns + 1)]``
        tokens, the image block then ``<|eot|>``."""
        turn, is_code = image_turn(rows, columns, self.layout)
        start = int(is_code.argmax())  # the first code: what comes before it starts both branches
        head = turn[:start]
        cond = self._rows([[*prompt, *head] for prompt in prompts])
        uncond = self._rows([head] * len(prompts)) if self.settings.cfg_scale != 1 else None
        decoder = GuidedDecoder(self.model, self.settings.cfg_scale)
        logits = decoder.prefill(cond, uncond, room=len(turn) - start)
        drawn: list[Tensor] = []
        unfed: list[Tensor] = []  # tokens appended since the last forward
        for token, code in zip(turn[start:].tolist(), is_code[start:].tolist(), strict=True):
            if code:
                if unfed:
                    logits = decoder.extend(torch.stack(unfed, dim=1))
                    unfed = []
                next_tokens = self._draw(logits, self.image_codes, self.settings.image_top_k, generator)
            else:
                next_tokens = torch.full((len(prompts),), token, device=self.device)
            drawn.append(next_tokens)
            unfed.append(next_tokens)
        fixed = torch.as_tensor(head, device=self.device).expand(len(prompts), start)
        return torch.cat([fixed, torch.stack(drawn, dim=1)], dim=1)

    @torch.no_grad()
    def text(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, generator: torch.Generator
    ) -> list[list[int]]:
        """The text answer to each prompt, ``<|eot|>`` included (cut at ``max_new_tokens`` tokens)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        end = self.layout.end_of_turn
        decoder = IncrementalDecoder(self.model)
        logits = decoder.prefill(self._rows(prompts), room=max_new_tokens)
        ended = torch.zeros(len(prompts), dtype=torch.bool, device=self.device)
        drawn: list[Tensor] = []
        for step in range(max_new_tokens):
            if step:
                logits = decoder.extend(drawn[-1][:, None])
            drawn.append(self._draw(logits, self.text_tokens, self.settings.text_top_k, generator))
            ended |= drawn[-1] == end
            if bool(ended.all()):
                break
        rows = torch.stack(drawn, dim=1).tolist()
        return [row[: row.index(end) + 1] if end in row else row for row in rows]
