import pytest

from polymodal.config import ConfigError, apply_overrides, parse_override


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("x=3", 3),
        ("x=1.5", 1.5),
        ("x=3e-4", 3e-4),
        ("x=-1E3", -1000.0),
        ("x=[1,2]", [1, 2]),
        ("x={a: 1, b: [c]}", {"a": 1, "b": ["c"]}),
        ("x=null", None),
        ("x=true", True),
        ("x='a b'", "a b"),
        ("x=", ""),
        ("x=2024-01-01", "2024-01-01"),
        ("x=${constants.dim}", "${constants.dim}"),
        ("x=a=b", "a=b"),
        (" x = 7 ", 7),
    ],
)
def test_values_parse_as_yaml(text, value):
    override = parse_override(text)
    assert (override.action, override.key, override.value) == ("set", "x", value)
    assert type(override.value) is type(value)


def test_set_add_delete_on_a_tree_including_list_indices():
    tree = {"a": {"b": 1, "l": [10, 20, 30]}, "c": 2}
    apply_overrides(tree, ["a.b=5", "a.l.1=99", "~a.l.0", "+a.new.deep=1", "~c", "+c=[1]"])
    assert tree == {"a": {"b": 5, "l": [99, 30], "new": {"deep": 1}}, "c": [1]}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("novalue", "is not of the form key=value"),
        ("~a.b=1", "a delete ('~key') takes no value"),
        ("a..b=1", "invalid key 'a..b'"),
        ("=1", "invalid key ''"),
        ("a.b=[1,2", "cannot parse the value as YAML"),
        ("a.l.7=1", "cannot set 'a.l.7': no such key"),
        ("a.b.c=1", "cannot set 'a.b.c': no such key ('a.b' is not a mapping)"),
        ("+a.b.c=1", "cannot add 'a.b.c': 'a.b' is not a mapping"),
        ("+a.l.x=1", "cannot add 'a.l.x': 'a.l' is not a mapping"),
        ("a.bb=1", "did you mean 'a.b'? (use '+a.bb=...' to add a new key)"),
    ],
)
def test_bad_overrides(override, expected):
    tree = {"a": {"b": 1, "l": [1]}}
    with pytest.raises(ConfigError) as caught:
        apply_overrides(tree, [override])
    assert expected in str(caught.value)
    assert tree == {"a": {"b": 1, "l": [1]}}


def test_unrelated_key_gets_no_suggestion():
    with pytest.raises(ConfigError) as caught:
        apply_overrides({"experiment": {"seed": 0, "name": "x"}}, ["experiment.zzzz=1"])
    assert "did you mean" not in str(caught.value)
