"""CaptionEncoder: start token, text tokens, end token, padding, for the BPE and WordPiece tokenizers trained here."""

import pytest
import torch
from tokenizers import Tokenizer, models

from polymodal.data.synth.texts import synthetic_scene_texts
from polymodal.tokenizers.text.bpe import BOS_ID, EOS_ID, PAD_ID, min_vocab_size, save_tokenizer, train_bpe
from polymodal.tokenizers.text.captions import CaptionEncoder
from polymodal.tokenizers.text.wordpiece import DEFAULT_LAYOUT, train_wordpiece
from polymodal.tokenizers.text.wordpiece import EOS_ID as WP_EOS
from polymodal.tokenizers.text.wordpiece import PAD_ID as WP_PAD
from polymodal.tokenizers.text.wordpiece import SOS_ID as WP_SOS

TEXTS = synthetic_scene_texts(30)


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(TEXTS, min_vocab_size() + 200)


def test_bpe_captions_are_start_text_end_then_padding(bpe, tmp_path):
    encoder = CaptionEncoder.from_file(save_tokenizer(bpe, tmp_path / "bpe.json"), max_tokens=48)
    texts = ["a small red cube", None, TEXTS[0]]
    out = encoder(texts)
    assert out["ids"].shape == (3, 48) and out["ids"].dtype == torch.int64
    body = bpe.encode(texts[0], add_special_tokens=False).ids
    assert out["ids"][0, : len(body) + 2].tolist() == [BOS_ID, *body, EOS_ID]
    assert (out["ids"][0, len(body) + 2 :] == PAD_ID).all() and int(out["eot"][0]) == len(body) + 1
    assert out["mask"][0].tolist() == [True] * (len(body) + 2) + [False] * (46 - len(body))
    assert bpe.decode(out["ids"][0].tolist()) == texts[0]
    # Absent: all padding, nothing attended.
    assert (out["ids"][1] == PAD_ID).all() and not out["mask"][1].any() and int(out["eot"][1]) == 0
    # Too long: truncated, and the end token is kept at the last position.
    short = CaptionEncoder(bpe, max_tokens=12)(texts)
    long = bpe.encode(TEXTS[0], add_special_tokens=False).ids
    assert len(long) > 10
    assert short["ids"][2].tolist() == [BOS_ID, *long[:10], EOS_ID] and int(short["eot"][2]) == 11
    assert short["mask"][2].all()


def test_wordpiece_captions_use_its_layout():
    tokenizer = train_wordpiece(TEXTS, DEFAULT_LAYOUT.first_learnt_id + 200)
    out = CaptionEncoder(tokenizer, max_tokens=8)(["a cube"])
    body = tokenizer.encode("a cube", add_special_tokens=False).ids
    assert out["ids"][0].tolist() == [WP_SOS, *body, WP_EOS] + [WP_PAD] * (6 - len(body))


def test_a_tokenizer_without_the_specials_or_a_short_length_is_an_error():
    with pytest.raises(ValueError, match=r"has none of the special token sets \[\['<\|pad\|>'"):
        CaptionEncoder(Tokenizer(models.BPE()), max_tokens=8)
    with pytest.raises(ValueError, match="max_tokens must be >= 2"):
        CaptionEncoder(train_bpe(TEXTS[:5], min_vocab_size()), max_tokens=1)
