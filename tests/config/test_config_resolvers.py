import pytest
from omegaconf import OmegaConf

from polymodal.config import ConfigError, load_config, register_resolvers


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("${add:2,3}", 5),
        ("${add:0.5,2}", 2.5),
        ("${mul:3,4}", 12),
        ("${mul:1.5,2}", 3.0),
        ("${div:7,2}", 3),
        ("${div:7.0,2}", 3.5),
        ("${div:${mul:${c},4},${add:1,1}}", 16),
    ],
)
def test_arithmetic_resolvers(expression, expected):
    register_resolvers()
    register_resolvers()  # idempotent
    value = OmegaConf.create({"c": 8, "v": expression}).v
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("${div:1,0}", "divides by zero"),
        ("${mul:2,abc}", "needs numbers, got 'abc'"),
        ("${add:true,1}", "needs numbers"),
    ],
)
def test_resolver_errors_name_the_key(write_yaml, required_sections, expression, expected):
    path = write_yaml("main.yaml", required_sections.replace("model: {}", f"model: {{x: '{expression}'}}"))
    with pytest.raises(ConfigError, match=r"^model\.x: cannot resolve") as caught:
        load_config(path)
    assert expected in str(caught.value)


def test_include_is_relative_to_the_file_that_names_it_and_lands_in_the_saved_config(tmp_path, monkeypatch):
    from pathlib import Path

    import yaml

    from polymodal.config import save_config

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)  # not the repository: paths in the config must not depend on the working directory
    cfg = load_config(repo / "configs" / "fourm" / "tiny.yaml")
    alphas_file = repo / "configs" / "fourm" / "alphas" / "mix_rgb2all_capbias_all2all.yaml"
    expected = yaml.safe_load(alphas_file.read_text())
    assert OmegaConf.to_container(cfg.data.alphas) == expected
    save_config(cfg, tmp_path / "run" / "config.yaml")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["alphas"] == expected  # the run directory holds the alphas, not a path to them


def test_include_of_a_missing_file_names_the_key(tmp_path):
    (tmp_path / "exp.yaml").write_text("data:\n  alphas: ${include:nowhere.yaml}\n")
    with pytest.raises(ConfigError, match=r"data.alphas: .*nowhere.yaml.*no such file"):
        load_config(tmp_path / "exp.yaml")
