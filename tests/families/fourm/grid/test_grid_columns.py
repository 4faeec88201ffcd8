"""Grid column titles in words, and a prediction's ground truth right after it."""

import pytest
import torch

from polymodal.families.fourm.grid.columns import (
    Column,
    input_title,
    modality_word,
    predicted_title,
    prediction_columns,
    truth_title,
)


def test_titles_name_the_modalities_in_words():
    assert [modality_word(name) for name in ("tok_depth@64", "rgb@64", "caption", "det")] == [
        "depth",
        "rgb",
        "caption",
        "det",
    ]
    assert input_title("rgb@64") == "rgb (input)"
    assert predicted_title("tok_depth@64", ["rgb@64"]) == "depth predicted from rgb"
    assert predicted_title("caption", ["rgb@64", "tok_rgb@64", "tok_depth@64"]) == "caption predicted from rgb, depth"
    assert truth_title("tok_depth@64") == "depth (ground truth)"
    assert truth_title("tok_depth@64", tokens=True) == "depth (ground-truth tokens)"


def test_ground_truth_follows_its_prediction_only_when_given():
    predicted, truth = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    alone = prediction_columns("tok_depth@64", ["rgb@64"], "depth", predicted)
    assert [(c.title, c.view) for c in alone] == [("depth predicted from rgb", "depth")]
    paired = prediction_columns("tok_depth@64", ["rgb@64"], "depth", predicted, truth, truth_is_tokens=True)
    assert [c.title for c in paired] == ["depth predicted from rgb", "depth (ground-truth tokens)"]
    assert paired[1].values is truth and len(paired[1]) == 2


def test_a_column_keeps_its_first_rows_and_knows_its_views():
    column = Column("caption (input)", "text", ["a", "b", "c"])
    assert column.first_rows(2) == Column("caption (input)", "text", ["a", "b"])
    with pytest.raises(ValueError, match="unknown view 'tok_depth@64'"):
        Column("depth", "tok_depth@64", torch.zeros(1, 1, 4, 4))
