"""configs/llm/tiny.yaml shrunk further (width 64, 2 blocks, 2 x 64 tokens, vocabulary 256), for the planner tests
that build and run it many times. Importable from any test (pytest puts this folder on ``sys.path``)."""

TINY = "configs/llm/tiny.yaml"
SMALL = [
    "constants.dim=64",
    "constants.depth=2",
    "constants.seq_len=64",
    "constants.batch_size=2",
    "constants.vocab_size=256",
    "constants.multiple_of=32",
]
