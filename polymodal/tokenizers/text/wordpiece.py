"""4M's WordPiece text tokenizer (HF ``tokenizers``) with its fixed id layout.

The 4M sequence modalities (caption, det, ...) are tokenized by one WordPiece vocabulary whose first ids
are a contract (``fourm/utils/tokenizer/trained/text_tokenizer_4m_wordpiece_30k.json``):

====================================  =========================================================
id                                    token
====================================  =========================================================
0, 1, 2, 3                            ``[PAD]``, ``[UNK]``, ``[SOS]``, ``[EOS]``
4 .. 4+S-1                            sentinels ``[S_0]`` .. ``[S_{S-1}]`` (span masking)
4+S + B*k + n                         coordinate bin ``vk=n``, axis k in 0..3, n in 0..B-1
4+S+4B + i                            the i-th object class name in *sorted* order
after those                           learnt WordPieces
====================================  =========================================================

S = ``num_sentinels`` (default 200), B = ``coord_bins`` (default 1000). Classes are sorted because 4M's
test vector puts COCO's "cat" and "chair" at classes 20 and 22, their alphabetical positions.

Normalisation is BERT's as in 4M (``BertNormalizer(lowercase=True, strip_accents=None)``: lowercase, and
``strip_accents=None`` follows ``lowercase``, so accents are stripped too; CJK characters are split),
pre-tokenization splits on whitespace and punctuation, and the decoder joins ``##`` continuations.
Coordinate and class tokens are added tokens matched as whole words after normalisation (``"V0=12"`` is
the one token ``v0=12``; ``"cubes"`` is never split into the words ``cube`` and ``s``), but not *special*
ones: ``decode`` keeps them and drops only ``[PAD]``/``[UNK]``/``[SOS]``/``[EOS]``/sentinels.
A character the corpus never showed makes its whole word ``[UNK]``. Decoding joins the words with spaces and then
takes the space before ``. , ! ? :`` out again (BERT's cleanup covers all but the colon, which left
``"floor : a"``); loaded tokenizers get this decoder too, so files saved before it decode alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from polymodal.tokenizers.text.bpe import load_tokenizer

BASE_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[SOS]", "[EOS]")
PAD_ID, UNK_ID, SOS_ID, EOS_ID = range(len(BASE_SPECIAL_TOKENS))
FIRST_SENTINEL_ID = len(BASE_SPECIAL_TOKENS)
CONTINUATION_PREFIX = "##"


NUM_COORD_AXES = 4  # v0=x0, v1=y0, v2=x1, v3=y1
# The object classes of the built-in synthetic world (``polymodal.data.synth.scene.SHAPES``; a test keeps the two
# equal): the default layout's class tokens. Tokenizers take their corpus and classes from the caller.
SYNTHETIC_CLASSES = ("sphere", "cube", "cylinder", "cone")


def coord_token(axis: int, value: int) -> str:
    """The text of one coordinate bin token, e.g. ``coord_token(1, 40) == "v1=40"``."""
    return f"v{axis}={value}"


def sentinel_token(k: int) -> str:
    return f"[S_{k}]"


@dataclass(frozen=True)
class WordPieceLayout:
    """The fixed (not learnt) part of the vocabulary; ``tokens()[i]`` is the token with id ``i``."""

    num_sentinels: int = 200
    coord_bins: int = 1000
    class_names: tuple[str, ...] = SYNTHETIC_CLASSES

    def __post_init__(self) -> None:
        if self.num_sentinels < 0:
            raise ValueError(f"num_sentinels must be >= 0, got {self.num_sentinels}")
        if self.coord_bins < 1:
            raise ValueError(f"coord_bins must be >= 1, got {self.coord_bins}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {list(self.class_names)}")
        for name in self.class_names:
            if not name or name != name.strip().lower():
                raise ValueError(f"class name {name!r} must be non-empty, lowercase, without surrounding whitespace")

    @property
    def first_coord_id(self) -> int:
        return FIRST_SENTINEL_ID + self.num_sentinels

    @property
    def first_class_id(self) -> int:
        return self.first_coord_id + NUM_COORD_AXES * self.coord_bins

    @property
    def first_learnt_id(self) -> int:
        return self.first_class_id + len(self.class_names)

    def sentinel_id(self, k: int) -> int:
        if not 0 <= k < self.num_sentinels:
            raise ValueError(f"sentinel index {k} is outside 0..{self.num_sentinels - 1}")
        return FIRST_SENTINEL_ID + k

    def coord_id(self, axis: int, value: int) -> int:
        if not 0 <= axis < NUM_COORD_AXES:
            raise ValueError(f"coordinate axis {axis} is outside 0..{NUM_COORD_AXES - 1}")
        if not 0 <= value < self.coord_bins:
            raise ValueError(f"coordinate bin {value} is outside 0..{self.coord_bins - 1}")
        return self.first_coord_id + self.coord_bins * axis + value

    def class_id(self, name: str) -> int:
        if name not in self.class_names:
            raise ValueError(f"unknown class name {name!r}; known: {sorted(self.class_names)}")
        return self.first_class_id + sorted(self.class_names).index(name)

    def special_tokens(self) -> list[str]:
        """Tokens ``decode`` drops by default: the base specials and the sentinels."""
        return [*BASE_SPECIAL_TOKENS, *(sentinel_token(k) for k in range(self.num_sentinels))]

    def word_tokens(self) -> list[str]:
        """Coordinate bins then sorted class names: single tokens that ``decode`` keeps."""
        coords = [coord_token(axis, n) for axis in range(NUM_COORD_AXES) for n in range(self.coord_bins)]
        return [*coords, *sorted(self.class_names)]

    def tokens(self) -> list[str]:
        return [*self.special_tokens(), *self.word_tokens()]


DEFAULT_LAYOUT = WordPieceLayout()


def sentinel_id(k: int) -> int:
    """Id of ``[S_k]`` in the default layout (200 sentinels)."""
    return DEFAULT_LAYOUT.sentinel_id(k)


def coord_id(axis: int, value: int) -> int:
    """Id of ``v{axis}={value}`` in the default layout (200 sentinels, 1000 bins)."""
    return DEFAULT_LAYOUT.coord_id(axis, value)


def _learn_wordpieces(texts: Iterable[str], max_learnt: int, min_frequency: int) -> list[str]:
    """WordPieces of ``texts`` in the trainer's id order, at most ``max_learnt`` of them (plus the alphabet).

    The same texts always give the same pieces: the HF trainer numbers the continuation characters (``##c``) in
    the iteration order of a hash map seeded per process, and breaks ties between equally frequent merges by
    those numbers, so two runs learnt different vocabularies. Declaring every continuation character up front, in
    sorted order, fixes their ids and with them every tie-break.
    """
    texts = list(texts)
    scratch = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=CONTINUATION_PREFIX))
    scratch.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None)
    scratch.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    continuation_chars = {
        char
        for text in texts
        for word, _ in scratch.pre_tokenizer.pre_tokenize_str(scratch.normalizer.normalize_str(text))
        for char in word[1:]
    }
    trainer = trainers.WordPieceTrainer(
        vocab_size=max_learnt + 1,  # the trainer's own "[UNK]" is dropped below
        min_frequency=min_frequency,
        special_tokens=["[UNK]", *(CONTINUATION_PREFIX + char for char in sorted(continuation_chars))],
        continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=False,
    )
    scratch.train_from_iterator(iter(texts), trainer=trainer)
    vocab = scratch.get_vocab(with_added_tokens=False)
    return [token for token in sorted(vocab, key=vocab.__getitem__) if token != "[UNK]"]


def wordpiece_decoder() -> decoders.Decoder:
    """WordPieces back to text: ``##`` continuations joined, no space before punctuation (module docstring)."""
    return decoders.Sequence([decoders.WordPiece(prefix=CONTINUATION_PREFIX), decoders.Replace(" :", ":")])


def build_wordpiece_tokenizer(layout: WordPieceLayout, learnt: Sequence[str]) -> Tokenizer:
    """A tokenizer with ``layout``'s fixed ids followed by the ``learnt`` pieces not already among them."""
    fixed = layout.tokens()
    fixed_set = set(fixed)
    vocab = {token: i for i, token in enumerate([*fixed, *(t for t in learnt if t not in fixed_set)])}
    tokenizer = Tokenizer(
        models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix=CONTINUATION_PREFIX)
    )
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = wordpiece_decoder()
    tokenizer.add_special_tokens(layout.special_tokens())
    tokenizer.add_tokens(
        [AddedToken(t, single_word=True, normalized=True, special=False) for t in layout.word_tokens()]
    )
    return tokenizer


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    num_sentinels: int = 200,
    coord_bins: int = 1000,
    class_names: Sequence[str] = SYNTHETIC_CLASSES,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train 4M's WordPiece tokenizer: the fixed layout (module docstring) then learnt pieces.

    The result may have fewer than ``vocab_size`` tokens (the corpus runs out of pieces, or a learnt piece
    is a class name already in the layout). Raises ValueError if the layout plus the corpus alphabet do
    not fit in ``vocab_size``.
    """
    layout = WordPieceLayout(num_sentinels, coord_bins, tuple(class_names))
    if vocab_size <= layout.first_learnt_id:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the fixed layout alone takes {layout.first_learnt_id} ids "
            f"({num_sentinels} sentinels, {NUM_COORD_AXES}x{coord_bins} coordinate bins, "
            f"{len(class_names)} classes)"
        )
    if min_frequency < 0:
        raise ValueError(f"min_frequency must be >= 0, got {min_frequency}")
    tokenizer = build_wordpiece_tokenizer(
        layout, _learn_wordpieces(texts, vocab_size - layout.first_learnt_id, min_frequency)
    )
    if tokenizer.get_vocab_size() > vocab_size:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the layout ({layout.first_learnt_id}) plus the corpus "
            f"alphabet need {tokenizer.get_vocab_size()} ids"
        )
    check_layout_ids(tokenizer, layout, source="the freshly trained tokenizer")
    return tokenizer


def check_layout_ids(tokenizer: Tokenizer, layout: WordPieceLayout = DEFAULT_LAYOUT, source: str = "tokenizer") -> None:
    """Raise ValueError unless ``tokenizer`` is a WordPiece tokenizer with every fixed id of ``layout``."""
    if not isinstance(tokenizer.model, models.WordPiece):
        raise ValueError(f"{source}: expected a WordPiece model, got {type(tokenizer.model).__name__}")
    for expected_id, token in enumerate(layout.tokens()):
        actual = tokenizer.token_to_id(token)
        if actual != expected_id:
            raise ValueError(f"{source}: layout token {token!r} has id {actual}, expected {expected_id}")


def load_wordpiece(path: str | Path, layout: WordPieceLayout = DEFAULT_LAYOUT) -> Tokenizer:
    """Load a tokenizer JSON (written by ``bpe.save_tokenizer``, atomically) and check it has ``layout``'s ids; it
    decodes with :func:`wordpiece_decoder` whatever decoder the file names.

    Raises ValueError if the file is corrupt, not WordPiece, or has another layout.
    """
    tokenizer = load_tokenizer(path)
    check_layout_ids(tokenizer, layout, source=f"tokenizer {path}")
    tokenizer.decoder = wordpiece_decoder()
    return tokenizer
