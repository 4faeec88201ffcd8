"""The autoregressive image–text family (Lumina-mGPT / Chameleon): interleaved conversations become flat token
records over one shared vocabulary (text BPE + specials + image codes), which a decoder-only model trains on.
See docs/lumina.md."""
