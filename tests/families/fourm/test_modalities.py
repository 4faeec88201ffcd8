import pytest

from polymodal.families.fourm.modalities import ModalityRegistry, modality_spec


def test_builtin_image_modality_takes_resolution_from_name() -> None:
    spec = modality_spec("tok_rgb@224")
    assert (spec.kind, spec.vocab_size, spec.grid, spec.num_positions()) == ("img", 16384, (14, 14), 196)
    assert spec.stem == "tok_rgb" and spec.folder == "tok_rgb" and not spec.is_pixels


def test_overrides_describe_our_own_tokenizers() -> None:
    spec = modality_spec("tok_depth@64", {"vocab_size": 256, "patch_size": 8})
    assert spec.grid == (8, 8) and spec.vocab_size == 256


def test_pixels_are_input_only_and_sequences_have_room_for_input_and_target() -> None:
    rgb = modality_spec("rgb@64", {"patch_size": 8})
    assert rgb.is_pixels and not rgb.decoder and rgb.num_positions() == 64
    caption = modality_spec("caption", {"max_tokens": 40})
    assert caption.is_sequence and caption.num_positions() == 82
    t5 = modality_spec("t5_caption")
    assert t5.num_positions() == 77 and not t5.decoder


def test_global_token_modality_has_16_learned_positions() -> None:
    spec = modality_spec("tok_dinov2_global")
    assert spec.num_positions() == 16 and not spec.sincos_pos_emb


def test_registry_is_sorted_and_splits_encoder_and_decoder() -> None:
    registry = ModalityRegistry.from_config(["tok_rgb@64", "rgb@64", "caption"], {"rgb@64": {"patch_size": 8}})
    assert list(registry) == ["caption", "rgb@64", "tok_rgb@64"]
    assert [s.name for s in registry.decoder_modalities()] == ["caption", "tok_rgb@64"]
    assert len(registry.encoder_modalities()) == 3


def test_new_modality_from_config() -> None:
    spec = modality_spec("palette", {"kind": "seq", "vocab_size": 100, "max_tokens": 8})
    assert spec.kind == "seq" and spec.num_positions() == 18


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("unknown_thing", None, "not built in"),
        ("tok_rgb@64", {"vocab": 3}, "unknown field"),
        ("tok_rgb@60", {"patch_size": 8}, "not a multiple"),
        ("tok_rgb@abc", None, "resolution in pixels"),
        ("caption@64", None, "has no resolution"),
        ("rgb@64", {"patch_size": 8, "decoder": True}, "pixels can only be an input"),
        ("palette", {"kind": "seq", "max_tokens": 8}, "needs vocab_size"),
        ("palette", {"kind": "blob"}, "kind must be one of"),
    ],
)
def test_inconsistent_specs_name_the_modality(name: str, overrides: dict | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        modality_spec(name, overrides)


def test_registry_rejects_stray_overrides_duplicates_and_unknown_lookups() -> None:
    with pytest.raises(ValueError, match="not in the list"):
        ModalityRegistry.from_config(["caption"], {"det": {"max_tokens": 4}})
    with pytest.raises(ValueError, match="listed twice"):
        ModalityRegistry.from_config(["caption", "caption"])
    with pytest.raises(KeyError, match="unknown modality 'det'"):
        ModalityRegistry.from_config(["caption"])["det"]
