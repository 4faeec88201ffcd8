"""Byte-level BPE text tokenizer (HF ``tokenizers``) with a fixed block of reserved special tokens.

Special-token ids are a contract: pre-tokenized shards, conversation records and image-token layouts
store raw ids, so ``<|pad|>`` must be 0, ``<|eos|>`` 2, ``<|boi|>`` 8 and so on for *every* tokenizer
this library trains, whatever its vocabulary size or corpus. The specials therefore occupy ids
``0 .. len(SPECIAL_TOKENS) - 1`` in the order of :data:`SPECIAL_TOKENS`, and the 256 byte symbols
and learnt merges follow. Byte-level BPE can encode any string, so there is no ``<|unk|>``.

As usual with HF added tokens, the literal text of a special token (e.g. ``"<|eos|>"``) inside an
input string is encoded as that special token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from polymodal.files import atomic_output, exclusive_lock

MAX_IMAGE_SIDE_TOKENS = 128  # code rows/columns: 2048 px at 16x downsampling (Lumina's largest buckets)
NUM_RESERVED_TOKENS = 16  # room for future specials without moving any id
NUM_BYTE_TOKENS = 256

SPECIAL_TOKENS: list[str] = [
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|eot|>",  # end of a conversation turn
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|image|>",  # placeholder for an image in a prompt
    "<|boi|>",  # begin of image tokens
    "<|eoi|>",  # end of image tokens
    "<|eor|>",  # end of one row of image tokens
    *(f"<|h_{k}|>" for k in range(1, MAX_IMAGE_SIDE_TOKENS + 1)),  # image height in code rows
    *(f"<|w_{k}|>" for k in range(1, MAX_IMAGE_SIDE_TOKENS + 1)),  # image width in code columns
    *(f"<|reserved_{k}|>" for k in range(NUM_RESERVED_TOKENS)),
]

PAD_ID = SPECIAL_TOKENS.index("<|pad|>")
BOS_ID = SPECIAL_TOKENS.index("<|bos|>")
EOS_ID = SPECIAL_TOKENS.index("<|eos|>")


def min_vocab_size(special_tokens: Sequence[str] = SPECIAL_TOKENS) -> int:
    """Smallest vocabulary that holds the specials and all 256 byte symbols."""
    return len(special_tokens) + NUM_BYTE_TOKENS


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer; ``special_tokens`` get ids ``0..len-1`` in order.

    The result may have fewer than ``vocab_size`` tokens when the corpus runs out of merges that occur
    at least ``min_frequency`` times.
    """
    if vocab_size < min_vocab_size(special_tokens):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: it must hold {len(special_tokens)} special tokens "
            f"+ {NUM_BYTE_TOKENS} byte tokens = {min_vocab_size(special_tokens)}"
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(iter(texts), trainer=trainer)
    check_special_token_ids(tokenizer, special_tokens, source="the freshly trained tokenizer")
    return tokenizer


def check_special_token_ids(
    tokenizer: Tokenizer, special_tokens: Sequence[str] = SPECIAL_TOKENS, source: str = "tokenizer"
) -> None:
    """Raise ValueError unless every special token has its contractual id (its index in the list)."""
    for expected_id, token in enumerate(special_tokens):
        actual = tokenizer.token_to_id(token)
        if actual != expected_id:
            raise ValueError(
                f"{source}: special token {token!r} has id {actual}, expected {expected_id} (it was trained with "
                "another special-token layout; train it again)"
            )


def special_tokens_fingerprint(special_tokens: Sequence[str] = SPECIAL_TOKENS) -> str:
    """A short hash of the special-token layout, for naming cached tokenizers (a new layout trains anew)."""
    return hashlib.sha256("\n".join(special_tokens).encode()).hexdigest()[:8]


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """SHA-256 of the tokenizer's JSON serialisation: identical ids ⇔ identical fingerprint."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write the tokenizer JSON atomically (readers never see a partial file)."""
    target = Path(path)
    with atomic_output(target) as tmp:
        tokenizer.save(str(tmp))
    return target


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer JSON file written by :func:`save_tokenizer` (or any HF tokenizer JSON)."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {source}")
    try:
        return Tokenizer.from_file(str(source))
    except Exception as err:  # the Rust binding raises a bare Exception for any parse error
        raise ValueError(f"tokenizer file {source} is corrupt or not a tokenizer JSON: {err}") from err


def load_or_train_bpe(
    path: str | Path, vocab_size: int, corpus: Callable[[], Iterable[str]] | None, min_frequency: int = 2
) -> Tokenizer:
    """Load the tokenizer at ``path`` or, if absent, train it on ``corpus()`` and save it there.

    Concurrent callers (e.g. several ranks) are serialised with a file lock: one trains, the others
    wait and load its result.
    """
    target = Path(path)
    with exclusive_lock(target):
        if target.exists():
            tokenizer = load_tokenizer(target)
            check_special_token_ids(tokenizer, source=f"tokenizer {target}")
            if tokenizer.get_vocab_size() > vocab_size:
                raise ValueError(
                    f"tokenizer {target} has {tokenizer.get_vocab_size()} tokens, more than the requested "
                    f"vocab_size={vocab_size}; delete it to retrain, or raise vocab_size"
                )
            return tokenizer
        if corpus is None:
            raise FileNotFoundError(f"tokenizer file not found: {target}, and no corpus was given to train one")
        tokenizer = train_bpe(corpus(), vocab_size, min_frequency)
        save_tokenizer(tokenizer, target)
        return tokenizer
