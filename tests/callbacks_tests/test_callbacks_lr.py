"""callbacks/lr.py, the one writer of param groups' LRs: tensors in place, floats replaced,
each group's ratio to group 0 kept, the initial LR restored exactly."""

from __future__ import annotations

import pytest
import torch

from autolrs.callbacks.lr import GroupLRs, lr_value, write_lrs


def three_groups(lrs=(0.1, 0.03, 0.007), tensor=False):
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in lrs]
    groups = [{"params": [p], "lr": torch.tensor(lr) if tensor else lr} for p, lr in zip(params, lrs)]
    return torch.optim.SGD(groups, lr=lrs[0])


def test_write_lrs_fills_tensors_in_place_and_replaces_floats():
    optimizer = three_groups(tensor=True)
    held = [g["lr"] for g in optimizer.param_groups]
    write_lrs(optimizer, [0.5, torch.tensor(0.25), 0.125])
    assert [g["lr"] for g in optimizer.param_groups] == held  # the same tensor objects
    assert [lr_value(g["lr"]) for g in optimizer.param_groups] == [0.5, 0.25, 0.125]
    floats = three_groups()
    write_lrs(floats, [0.2, 0.1])  # fewer values: the last group is left alone
    assert [g["lr"] for g in floats.param_groups] == [0.2, 0.1, 0.007]


def test_group_ratios_are_kept_and_the_initial_lr_comes_back_exactly():
    optimizer = three_groups()
    lrs = GroupLRs(optimizer)
    assert lrs.initial == lrs.base == 0.1 and lrs.ratios == pytest.approx((1.0, 0.3, 0.07))
    lrs.set(0.2)
    assert lrs.current() == pytest.approx([0.2, 0.06, 0.014])
    lrs.set(0.1)
    assert lrs.current() == [0.1, 0.03, 0.007]  # bitwise, not 0.1 * (0.03 / 0.1)


def test_a_group_added_later_keeps_its_lr_when_first_seen_then_its_ratio():
    optimizer = three_groups((0.1,))
    lrs = GroupLRs(optimizer)
    lrs.set(0.2)
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.05})
    lrs.set(0.4)
    assert lrs.current() == pytest.approx([0.4, 0.05]) and lrs.ratios == pytest.approx((1.0, 0.125))
    lrs.set(0.8)
    assert lrs.current() == pytest.approx([0.8, 0.1])


def test_state_round_trip_and_bad_state():
    lrs = GroupLRs(three_groups())
    lrs.set(0.3)
    other = GroupLRs(three_groups((1.0, 1.0, 1.0)))
    other.load_state_dict(lrs.state_dict())
    assert other.state_dict() == lrs.state_dict() and other.base == 0.3
    with pytest.raises(ValueError, match="ratios"):
        other.load_state_dict({**lrs.state_dict(), "ratios": []})
    with pytest.raises(ValueError, match="no param groups"):
        GroupLRs(type("Empty", (), {"param_groups": []})())
