"""Det strings read back into class names and pixel boxes."""

import pytest

from polymodal.data.synth.det_text import DetObject, det_to_text, text_to_det
from polymodal.data.synth.render import render_scene


def test_reference_string_decodes_to_pixels_and_reads_as_class_and_corners():
    text = "v0=12 v1=40 v2=300 v3=500 cat v0=400 v1=10 v2=999 v3=700 chair"
    objects = text_to_det(text, 999)  # a 999 px image: bin n is pixel n
    assert objects == [DetObject("cat", (12, 40, 300, 500)), DetObject("chair", (400, 10, 999, 700))]
    assert [str(o) for o in text_to_det(text, (1998, 999))] == ["cat (12,80)-(300,1000)", "chair (400,20)-(999,1400)"]


def test_rendered_boxes_survive_the_round_trip_to_a_bin():
    sample = render_scene(3, 1, 64)
    boxes, labels = sample["det"]["boxes"], sample["det"]["labels"]
    objects = text_to_det(det_to_text(boxes, labels, 64), 64)
    assert len(objects) == len(labels)
    expected = sorted(zip(boxes.tolist(), labels.tolist(), strict=True), key=lambda b: b[0][0] ** 2 + b[0][1] ** 2)
    for obj, (box, _) in zip(objects, expected, strict=True):
        assert obj.box == pytest.approx(box, abs=64 / 999)


def test_words_that_make_no_object_are_skipped():
    text = "v0=10 v1=10 v2=5 v3=20 cube v0=3 cone v0=1 v1=1 v2=1000 v3=9 sphere v0=0 v1=0 v2=999 v3=999 cylinder x"
    assert text_to_det(text, 10) == [DetObject("cylinder", (0, 0, 10, 10))]
