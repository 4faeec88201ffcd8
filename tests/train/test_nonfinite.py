import torch
from torch import nn

from polymodal.config.schema import NonFiniteConfig
from polymodal.train.nonfinite import ForwardState, stop_reason


def test_restore_undoes_a_forward_update_of_persistent_float_buffers_only():
    model = nn.BatchNorm1d(3)
    model.register_buffer("scratch", torch.zeros(3), persistent=False)
    state = ForwardState(model)
    assert [b.data_ptr() for b in state.buffers] == [model.running_mean.data_ptr(), model.running_var.data_ptr()]
    before = state.snapshot()
    mean, var = model.running_mean.clone(), model.running_var.clone()
    model(torch.randn(4, 3) * 5 + 1)
    model.scratch.fill_(7.0)
    assert not torch.equal(model.running_mean, mean)
    state.restore(before)
    assert torch.equal(model.running_mean, mean) and torch.equal(model.running_var, var)
    assert torch.equal(model.scratch, torch.full((3,), 7.0))  # not checkpointed: not rolled back


def test_skip_policy_goes_on_up_to_max_skips_and_stop_policy_stops_at_once():
    skip = NonFiniteConfig(policy="skip", max_skips=2)
    assert stop_reason(skip, 1) is None and stop_reason(skip, 2) is None
    assert stop_reason(skip, 3) == "more than 2 steps skipped"
    assert stop_reason(NonFiniteConfig(policy="stop", max_skips=2), 1) == "policy is 'stop'"
