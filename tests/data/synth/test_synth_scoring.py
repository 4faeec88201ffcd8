"""Scoring against synthetic scenes: caption words, semseg shapes, pooled scores, the shared report table."""

import pytest
import torch

from polymodal.data.synth.render import render_scene
from polymodal.data.synth.scene import SHAPES
from polymodal.data.synth.scoring import (
    attribute_scores,
    caption_task,
    format_scores,
    mentioned_attributes,
    metric_entry,
    most_frequent,
    shapes_present,
)

SIZE = 32


@pytest.mark.parametrize(
    ("text", "colours", "shapes"),
    [
        ("two blue spheres and a small red cube", {"blue", "red"}, {"sphere", "cube"}),
        ("A Grey Cone, two grey cones", {"grey"}, {"cone"}),
        ("a greyish cubed thing on a checkered floor", set(), set()),
        ("cylinders; yellow-purple cyan orange green", {"yellow", "purple", "cyan", "orange", "green"}, {"cylinder"}),
    ],
)
def test_mentioned_attributes_of_hand_written_captions(text, colours, shapes):
    assert mentioned_attributes(text) == (colours, shapes)


def test_the_first_caption_names_the_shapes_of_every_visible_object():
    for index in range(6):
        sample = render_scene(3, index, SIZE)
        shapes = {SHAPES[label - 1] for label in sample["det"]["labels"].tolist()}
        assert mentioned_attributes(sample["caption"][0])[1] == shapes


def test_attribute_scores_pool_over_scenes():
    mentioned = [{"red", "blue"}, {"green"}, set()]
    present = [{"red"}, {"green", "cyan"}, {"grey"}]
    assert attribute_scores(mentioned, present) == {"precision": 2 / 3, "recall": 2 / 4}
    assert attribute_scores([set()], [set()]) == {"precision": None, "recall": None}
    with pytest.raises(ValueError, match="2 mentioned sets for 1 scenes"):
        attribute_scores([set(), set()], [set()])


def test_shapes_present_counts_classes_above_the_pixel_fraction():
    semseg = torch.zeros(2, 10, 10, dtype=torch.long)
    semseg[0, :3, :3] = SHAPES.index("cube") + 1  # 9 %
    semseg[0, 9, 9] = SHAPES.index("cone") + 1  # 1 %
    semseg[1, :5] = SHAPES.index("sphere") + 1
    assert shapes_present(semseg, 0.01) == [{"cube", "cone"}, {"sphere"}]
    assert shapes_present(semseg, 0.05) == [{"cube"}, {"sphere"}]
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        shapes_present(semseg[0], 0.01)


def test_most_frequent_breaks_ties_in_vocabulary_order():
    assert most_frequent([{"b"}, {"b", "c"}, {"c"}], ["a", "c", "b"]) == "c"


def test_caption_task_scores_model_and_constant_caption_by_hand():
    captions = ["a red cube and a blue sphere", "two red cones"]
    training = ["a red cube", "a red cone", "a green cone"]  # red and cone are the most frequent
    task = caption_task(["a red cube", "a green cone"], captions, training)
    assert task["baseline"] == "the constant caption 'a red cone'"
    assert task["colour_precision"]["model"] == 1 / 2 and task["colour_recall"]["model"] == 1 / 3
    assert task["shape_precision"]["model"] == 2 / 2 and task["shape_recall"]["model"] == 2 / 3
    assert task["colour_precision"]["baseline"] == 2 / 2 and task["colour_recall"]["baseline"] == 2 / 3
    assert task["shape_precision"]["baseline"] == 1 / 2 and task["shape_recall"]["baseline"] == 1 / 3
    assert task["shape_precision"]["model_wins"] and not task["colour_precision"]["model_wins"]


def test_metric_entry_and_the_table():
    assert metric_entry(0.2, 0.3, True)["model_wins"] and not metric_entry(0.2, 0.3, False)["model_wins"]
    assert metric_entry(None, 0.3, False)["model_wins"] is None
    tasks = {
        "t": {
            "baseline": "a guess",
            "score": metric_entry(0.5, 0.25, False, ceiling=0.75),
            "same": metric_entry(1, 1, False),
        },
    }
    table = format_scores("title", tasks, {"other": "needs x"}).splitlines()
    assert table[0] == "title"
    assert (
        "score (higher)" in table[2]
        and "0.5000" in table[2]
        and "model" in table[2]
        and "(ceiling: 0.7500)" in table[2]
    )
    assert table[3].rstrip().endswith("tie")
    assert table[4].strip() == "baseline: a guess" and table[5] == "  skipped other: needs x"
