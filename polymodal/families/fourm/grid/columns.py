"""The columns of a 4M picture grid, titled in words: an input, a prediction ("depth predicted from rgb") and,
right after it when the sample has that modality, its ground truth ("depth (ground truth)")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

IMAGE_VIEWS = ("rgb", "depth", "normal", "semseg")
TEXT_VIEWS = ("text", "det")
TOKEN_PREFIX = "tok_"


@dataclass(frozen=True)
class Column:
    """A title and one value per row, shown as ``view``: an image modality (:data:`IMAGE_VIEWS`, ``values`` a
    tensor ``[N, ...]`` in natural units), ``text``, or ``det`` (det strings, drawn as boxes on the row's rgb)."""

    title: str
    view: str
    values: Tensor | Sequence[str]

    def __post_init__(self) -> None:
        if self.view not in IMAGE_VIEWS + TEXT_VIEWS:
            raise ValueError(
                f"column {self.title!r}: unknown view {self.view!r}; expected one of {IMAGE_VIEWS + TEXT_VIEWS}"
            )

    def __len__(self) -> int:
        return len(self.values)

    def first_rows(self, rows: int) -> Column:
        return Column(self.title, self.view, self.values[:rows])


def modality_word(name: str) -> str:
    """How a title names a modality: ``tok_depth@64`` -> ``depth`` (no token prefix, no resolution)."""
    return name.partition("@")[0].removeprefix(TOKEN_PREFIX)


def input_title(name: str) -> str:
    return f"{modality_word(name)} (input)"


def predicted_title(name: str, sources: Sequence[str]) -> str:
    """``depth predicted from rgb``: ``sources`` are the modalities the model was given for it."""
    given = dict.fromkeys(modality_word(source) for source in sources)
    return f"{modality_word(name)} predicted from {', '.join(given)}"


def truth_title(name: str, tokens: bool = False) -> str:
    """``depth (ground truth)``; with ``tokens`` the truth is the sample's tokens, decoded like the prediction."""
    return f"{modality_word(name)} ({'ground-truth tokens' if tokens else 'ground truth'})"


def prediction_columns(
    target: str,
    sources: Sequence[str],
    view: str,
    predicted: Tensor | Sequence[str],
    truth: Tensor | Sequence[str] | None = None,
    truth_is_tokens: bool = False,
) -> list[Column]:
    """The column of a prediction of ``target`` from ``sources`` and, when there is one, its ``truth`` after it."""
    columns = [Column(predicted_title(target, sources), view, predicted)]
    if truth is not None:
        columns.append(Column(truth_title(target, truth_is_tokens), view, truth))
    return columns
