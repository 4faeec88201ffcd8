import pytest
import torch
from torch import nn

from polymodal.models.meta import (
    BlockList,
    KeyDeclarationError,
    MetaModel,
    ModelSeries,
    ModuleBlock,
    Objective,
    ReadWriteBlock,
    WeightedObjectives,
    call_block,
    checking_keys,
)


class Scale(ReadWriteBlock):
    def __init__(self, factor: float, read: str, write: str):
        super().__init__(read, write)
        self.factor = factor

    def forward(self, data):
        data[self.write_keys[0]] = data[self.read_keys[0]] * self.factor
        return data


class Sneaky(ReadWriteBlock):
    """Declares x -> y but also writes z."""

    def __init__(self):
        super().__init__("x", "y")

    def forward(self, data):
        data["y"] = data["x"]
        data["z"] = data["x"]
        return data


class Peeker(ReadWriteBlock):
    """Declares x -> y but reads w."""

    def __init__(self):
        super().__init__("x", "y")

    def forward(self, data):
        data["y"] = data["x"] + data["w"]
        return data


class MeanLoss(Objective):
    def __init__(self, key: str):
        super().__init__(read_keys=key)

    def forward(self, data):
        value = data[self.read_keys[0]].mean()
        return value, {"mean": value.detach()}


def test_metamodel_runs_slots_in_order_and_derives_keys():
    model = MetaModel(
        preprocessor=[Scale(2.0, "x", "a"), Scale(3.0, "a", "b")],
        trunk=Scale(5.0, "b", "c"),
        head=MetaModel(trunk=Scale(7.0, "c", "out")),
    )
    data = model({"x": torch.ones(2)})
    torch.testing.assert_close(data["out"], torch.full((2,), 210.0))
    assert model.read_keys == ("x",)
    assert model.write_keys == ("a", "b", "c", "out")
    assert isinstance(model.preprocessor, BlockList)


def test_model_series_runs_one_member_alone():
    series = ModelSeries({"image": Scale(2.0, "img", "img_emb"), "text": Scale(3.0, "txt", "txt_emb")})
    only_text = series({"txt": torch.ones(1)}, only="text")
    assert set(only_text) == {"txt", "txt_emb"}
    both = series({"img": torch.ones(1), "txt": torch.ones(1)})
    assert both["img_emb"].item() == 2.0 and both["txt_emb"].item() == 3.0
    with pytest.raises(KeyError, match="no model named 'audio'"):
        series({}, only="audio")
    with pytest.raises(ValueError, match="unknown models"):
        ModelSeries({"a": Scale(1.0, "x", "y")}, order=["a", "b"])


def test_module_block_adapts_plain_modules_with_several_outputs():
    linear = nn.Linear(3, 2)
    block = ModuleBlock(linear, "x", "y")
    x = torch.randn(4, 3)
    torch.testing.assert_close(block({"x": x})["y"], linear(x))

    splitter = ModuleBlock(nn.Identity(), "pair", ["first", "second"])
    out = splitter({"pair": (1, 2)})
    assert (out["first"], out["second"]) == (1, 2)
    with pytest.raises(ValueError, match="returned 3 outputs"):
        splitter({"pair": (1, 2, 3)})


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (Sneaky(), r"block 'trunk' .*wrote undeclared key 'z'"),
        (Peeker(), r"block 'trunk' .*read undeclared key 'w'"),
    ],
)
def test_checking_keys_names_block_and_key(block, message):
    model = MetaModel(trunk=block)
    data = {"x": torch.ones(1), "w": torch.ones(1)}
    model(dict(data))  # unchecked: runs
    with checking_keys(), pytest.raises(KeyDeclarationError, match=message):
        model(dict(data))


def test_checking_keys_reports_missing_input_with_present_keys():
    model = MetaModel(preprocessor=Scale(2.0, "x", "a"), trunk=Scale(2.0, "b", "c"))
    with checking_keys(), pytest.raises(KeyDeclarationError, match=r"block 'trunk' .*reads 'b'.*present: \['a', 'x'\]"):
        model({"x": torch.ones(1)})


def test_checked_run_gives_same_result_and_returns_real_dict():
    model = MetaModel(preprocessor=Scale(2.0, "x", "a"), trunk=Scale(3.0, "a", "b"))
    with checking_keys():
        out = call_block(model, {"x": torch.ones(1)})
    assert type(out) is dict and out["b"].item() == 6.0


def test_weighted_objectives_sum_and_report_parts():
    objective = WeightedObjectives({"a": MeanLoss("p"), "b": MeanLoss("q")}, weights={"b": 0.5})
    loss, metrics = objective({"p": torch.tensor([1.0, 3.0]), "q": torch.tensor([4.0])})
    assert loss.item() == pytest.approx(2.0 + 0.5 * 4.0)
    assert metrics["a"].item() == 2.0 and metrics["b/mean"].item() == 4.0
    assert objective.read_keys == ("p", "q")
    with pytest.raises(ValueError, match="unknown objectives"):
        WeightedObjectives({"a": MeanLoss("p")}, weights={"c": 1.0})
