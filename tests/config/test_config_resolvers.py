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
