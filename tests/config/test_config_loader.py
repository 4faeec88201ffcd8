import pytest
from omegaconf import OmegaConf

from polymodal.config import ConfigError, load_config, save_config


def test_defaults_path_form_merges_in_list_order_then_own_body(write_yaml):
    write_yaml("common/a.yaml", "constants: {x: 1, y: 1}\nmodel: {p: 1, q: 1}\n")
    write_yaml("common/b.yaml", "constants: {y: 2}\nmodel: {q: 2, r: [1, 2]}\n")
    path = write_yaml(
        "exp/main.yaml",
        """\
        defaults:
          - ../common/a.yaml
          - ../common/b
        model: {p: 3, r: [9]}
        data: {}
        optim: {}
        loss: {}
        """,
    )
    cfg = load_config(path)
    assert OmegaConf.to_container(cfg.constants) == {"x": 1, "y": 2}
    assert OmegaConf.to_container(cfg.model) == {"p": 3, "q": 2, "r": [9]}  # lists are replaced, not merged
    assert "defaults" not in cfg


def test_defaults_mapping_form_places_content_under_key_recursively(write_yaml):
    write_yaml("model/parts/trunk.yaml", "depth: 3\nwidth: ${constants.dim}\n")
    write_yaml("model/llama.yaml", "defaults:\n  - trunk: parts/trunk\ndim: ${constants.dim}\nlayers: 2\n")
    write_yaml("heads/linear.yaml", "classes: 10\n")
    path = write_yaml(
        "exp/main.yaml",
        """\
        defaults:
          - model: ../model/llama.yaml
          - model.head: ../heads/linear
        constants: {dim: 8}
        model: {layers: 4}
        data: {}
        optim: {}
        loss: {}
        """,
    )
    cfg = load_config(path)
    assert OmegaConf.to_container(cfg.model) == {
        "trunk": {"depth": 3, "width": 8},
        "dim": 8,
        "layers": 4,
        "head": {"classes": 10},
    }


def test_same_file_reached_twice_is_not_a_cycle(write_yaml, required_sections):
    write_yaml("shared.yaml", "constants: {s: 1}\n")
    write_yaml("left.yaml", "defaults: [shared]\n")
    write_yaml("right.yaml", "defaults: [shared]\n")
    cfg = load_config(write_yaml("main.yaml", "defaults: [left, right]\n" + required_sections))
    assert cfg.constants.s == 1


def test_defaults_cycle_is_an_error(write_yaml, required_sections):
    write_yaml("a.yaml", "defaults: [b.yaml]\n")
    write_yaml("b.yaml", "defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"defaults cycle: .*main\.yaml -> .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(write_yaml("main.yaml", "defaults: [a]\n" + required_sections))


def test_missing_default_names_the_referencing_file_and_suggests(write_yaml, required_sections):
    write_yaml("model/llama.yaml", "dim: 1\n")
    write_yaml("exp/inner.yaml", "defaults:\n  - model: ../model/lama\n")
    path = write_yaml("exp/main.yaml", "defaults: [inner]\n" + required_sections)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "lama.yaml" in message and "inner.yaml" in message and "did you mean 'llama.yaml'?" in message


def test_missing_config_file_names_path(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nothere.yaml"):
        load_config(tmp_path / "nothere.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model: [1, 2\n", "invalid YAML"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        ("5\n", "cannot load"),
        ("defaults: a.yaml\n", "'defaults' must be a list"),
        ("defaults:\n  - {model: 3}\n", "must be a path or a 'key: path' mapping"),
    ],
)
def test_malformed_files_name_the_file(write_yaml, text, expected):
    with pytest.raises(ConfigError, match=expected) as caught:
        load_config(write_yaml("bad.yaml", text))
    assert "bad.yaml" in str(caught.value)


def test_override_of_constant_reaches_every_interpolation(write_yaml):
    path = write_yaml(
        "main.yaml",
        """\
        constants: {dim: 8}
        model: {dim: "${constants.dim}", hidden: "${mul:${constants.dim},4}", nested: {d: "${constants.dim}"}}
        data: {}
        optim: {}
        loss: {}
        """,
    )
    cfg = load_config(path, overrides=["constants.dim=64"])
    assert (cfg.model.dim, cfg.model.hidden, cfg.model.nested.d) == (64, 256, 64)
    assert not OmegaConf.is_interpolation(cfg.model, "dim")  # returned config is resolved


def test_add_delete_and_experiment_default_overrides(write_yaml):
    path = write_yaml("main.yaml", "model: {dim: 8, bias: true}\ndata: {}\noptim: {}\nloss: {}\n")
    cfg = load_config(path, overrides=["+model.extra.depth=2", "~model.bias", "experiment.total_steps=5"])
    assert OmegaConf.to_container(cfg.model) == {"dim": 8, "extra": {"depth": 2}}
    assert cfg.experiment.total_steps == 5  # not in the file, yet overridable: schema defaults are merged first


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.dimm=3", "cannot set 'model.dimm': no such key — did you mean 'model.dim'?"),
        ("modle.dim=3", "cannot set 'modle.dim': no such key — did you mean 'model.dim'?"),
        ("+model.dim=3", "cannot add 'model.dim': it already exists"),
        ("~model.dimm", "cannot delete 'model.dimm': no such key — did you mean 'model.dim'?"),
        ("model.dim", "is not of the form key=value"),
    ],
)
def test_bad_overrides_are_config_errors(write_yaml, required_sections, override, expected):
    path = write_yaml("main.yaml", required_sections.replace("model: {}", "model: {dim: 8}"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides=[override])
    assert expected in str(caught.value)


def test_broken_interpolation_names_the_key_holding_it(write_yaml, required_sections):
    path = write_yaml(
        "main.yaml",
        "constants: {dim: 8}\n" + required_sections.replace("model: {}", "model: {a: {dim: '${constants.dimm}'}}"),
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith("model.a.dim: cannot resolve '${constants.dimm}'")
    assert "did you mean 'constants.dim'?" in message


def test_broken_interpolation_inside_a_list_names_the_element(write_yaml, required_sections):
    path = write_yaml("main.yaml", required_sections.replace("data: {}", "data: {sizes: [1, '${nope}']}"))
    with pytest.raises(ConfigError, match=r"^data\.sizes\[1\]: cannot resolve '\$\{nope\}'"):
        load_config(path)


def test_malformed_interpolation_from_override_is_a_config_error(write_yaml, required_sections):
    path = write_yaml("main.yaml", required_sections.replace("model: {}", "model: {dim: 1}"))
    with pytest.raises(ConfigError, match="model.dim"):
        load_config(path, overrides=["model.dim=${constants.dim"])


def test_mandatory_value_must_be_set(write_yaml, required_sections):
    path = write_yaml(
        "main.yaml",
        "constants:\n  dim: ???\n" + required_sections.replace("model: {}", "model: {d: '${constants.dim}'}"),
    )
    with pytest.raises(ConfigError, match=r"mandatory value\(s\) not set .*constants\.dim"):
        load_config(path)
    assert load_config(path, overrides=["constants.dim=4"]).model.d == 4


def test_save_config_round_trip(write_yaml, tmp_path):
    path = write_yaml(
        "main.yaml",
        """\
        constants: {dim: 8}
        model: {_target_: torch.nn.Linear, in_features: "${constants.dim}", out_features: "${div:${constants.dim},2}"}
        data: {sizes: [1, 2]}
        optim: {lr: 3.0e-4}
        loss: {}
        experiment: {name: roundtrip}
        """,
    )
    cfg = load_config(path, overrides=["constants.dim=16"])
    saved = tmp_path / "runs" / "x" / "config.yaml"
    save_config(cfg, saved)
    assert "${" not in saved.read_text()
    assert OmegaConf.to_container(OmegaConf.load(saved)) == OmegaConf.to_container(cfg)
    assert OmegaConf.to_container(load_config(saved)) == OmegaConf.to_container(cfg)
    assert [p.name for p in saved.parent.iterdir()] == ["config.yaml"]  # no temporary file left behind
