from pathlib import Path

import numpy as np
import pytest

from polymodal.families.lumina.conversations import (
    RawItem,
    Rejected,
    assemble,
    check_item,
    plain_text_tokenizer,
    plan_segments,
    read_items,
    sequence_length,
)
from polymodal.families.lumina.vocabulary import VocabularyLayout, image_block
from polymodal.tokenizers.text.bpe import train_bpe


def turns(*values: str, roles=("human", "gpt")) -> list[dict]:
    return [{"from": roles[i % 2], "value": v} for i, v in enumerate(values)]


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ([1, 2], "malformed_item"),
        ({"conversations": "hi"}, "malformed_item"),
        ({"conversations": [{"from": "human"}]}, "malformed_item"),
        ({"conversations": []}, "empty_conversation"),
        ({"conversations": turns("a", "b", roles=("gpt", "human"))}, "role_order"),
        ({"conversations": [*turns("a"), *turns("b")]}, "role_order"),
        ({"conversations": turns("look <|image|>", "ok")}, "placeholder_mismatch"),
        ({"conversations": turns("a", "b"), "image": ["x.png"]}, "placeholder_mismatch"),
        ({"conversations": turns("just a question")}, "no_target"),
        ({"conversations": turns("a\udcff", "b")}, "non_utf8"),
        ({"conversations": turns("a", "b"), "image": 3}, "malformed_item"),
    ],
)
def test_bad_items_are_rejected_with_their_reason(item, reason):
    with pytest.raises(Rejected) as rejected:
        check_item(RawItem(0, item), Path("."))
    assert rejected.value.reason == reason


def test_roles_are_case_insensitive_images_optional_and_paths_relative_to_the_input(tmp_path):
    item = {"conversations": turns("Draw <|image|>", "Done", roles=("User", "ASSISTANT")), "image": "a.png"}
    conversation = check_item(RawItem(4, {**item, "id": "x"}), tmp_path)
    assert conversation.images == (tmp_path / "a.png",) and conversation.item_id == "x"
    text_only = check_item(RawItem(5, {"conversations": turns("q", "a")}), tmp_path)
    assert text_only.images == () and text_only.item_id == "5"


def test_jsonl_lines_that_are_not_json_or_utf8_become_rejected_items(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes(b'{"conversations": []}\n{"bro\n"\xff"\n')
    reasons = [raw.problem.reason if raw.problem else None for raw in read_items(path)]
    assert reasons == [None, "malformed_item", "non_utf8"]


def test_labels_cover_exactly_the_assistant_turns_and_special_text_stays_text():
    tokenizer = plain_text_tokenizer(train_bpe(["describe the image please <|eot|> ok"] * 50, 600))
    layout = VocabularyLayout(text_vocab_size=600, codebook_size=4)
    item = {
        "conversations": turns("describe <|image|> <|eot|>", "ok <|image|>", "please", "the image"),
        "image": ["a", "b"],
    }
    conversation = check_item(RawItem(0, item), Path("."))
    segments = plan_segments(conversation, tokenizer)
    blocks = [
        image_block(np.zeros((1, 2), dtype=np.int64), layout),
        image_block(np.ones((2, 1), dtype=np.int64), layout),
    ]
    tokens, labels = assemble(segments, blocks, layout)
    assert len(tokens) == sequence_length(segments, [len(b) for b in blocks])
    # plain reference: split at <|eot|> outside image blocks; odd turns (and their <|eot|>) are trained
    expected, turn, inside_image = [], 0, False
    for token in tokens.tolist():
        inside_image = (inside_image or token == layout.begin_image) and token != layout.end_image
        expected.append(turn % 2 == 1 and token != layout.bos)
        if token == layout.end_of_turn and not inside_image:
            turn += 1
    assert labels.tolist() == expected and turn == 4
    assert (tokens == layout.end_of_turn).sum() == 4  # the typed "<|eot|>" was encoded as characters
    assert tokenizer.decode(tokens[1:12].tolist(), skip_special_tokens=False).startswith("describe ")
