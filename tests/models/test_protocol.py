"""What the trainer asks of a model comes from the model itself (models/protocol.py), never from its class."""

from torch import nn

from polymodal.models.layers.block import TransformerBlock
from polymodal.models.llm import build_llm
from polymodal.models.protocol import DecoderLayout, ParallelPlan
from polymodal.train.parallel.plans import fsdp_units, plan_for


def test_the_llm_describes_where_tensor_parallelism_splits_it():
    model = build_llm(vocab_size=64, dim=16, depth=2, num_heads=2)
    plan = plan_for(model)
    layout = plan.tensor_parallel
    assert isinstance(layout, DecoderLayout)
    assert isinstance(model.get_submodule(layout.embedding), nn.Embedding)
    assert all(isinstance(block, TransformerBlock) for block in model.get_submodule(layout.blocks))
    assert isinstance(model.get_submodule(layout.head), nn.Linear)
    model.get_submodule(layout.final_norm)
    assert plan.sequence_keys == ("input_ids", "target_ids", "position_ids")


class _Declaring(nn.Module):
    """A model of some family that declares its own plan and FSDP units."""

    def __init__(self):
        super().__init__()
        self.inner = build_llm(vocab_size=64, dim=16, depth=2, num_heads=2)
        self.extra = nn.Linear(4, 4)

    def parallel_plan(self) -> ParallelPlan:
        return ParallelPlan(sequence_keys=("tokens",))

    def fsdp_units(self) -> list[nn.Module]:
        return [self.extra]


def test_a_model_s_own_declarations_win_and_others_get_the_defaults():
    declaring = _Declaring()
    assert plan_for(declaring) == ParallelPlan(sequence_keys=("tokens",))
    assert fsdp_units(declaring) == [declaring.extra]
    plain = nn.Sequential(build_llm(vocab_size=64, dim=16, depth=3, num_heads=2))
    assert plan_for(plain) == ParallelPlan()  # no tensor or context parallelism for it
    assert len(fsdp_units(plain)) == 3  # every transformer block
