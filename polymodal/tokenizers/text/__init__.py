"""Text tokenizers (Hugging Face ``tokenizers``): byte-level BPE and 4M's WordPiece id layout."""
