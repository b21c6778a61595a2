"""The stacked optimizer and schedules against torch.optim, and the member mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trials._optim import PlateauSchedule, StackedOptimizer, step_schedule_factor

SHAPES = [(5, 4), (1, 4), (7,)]


def _grads(steps, n_members, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(n_members, *s, generator=g) for s in SHAPES] for _ in range(steps)]


def _init(n_members, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n_members, *s, generator=g) for s in SHAPES]


CONFIGS = [
    (
        "sgd",
        dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    ),
    ("sgd", dict(lr=0.1, momentum=0.0, weight_decay=0.0), lambda p: torch.optim.SGD(p, lr=0.1)),
    ("adam", dict(lr=1e-2, weight_decay=1e-2), lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2)),
    ("adam", dict(lr=3e-3), lambda p: torch.optim.Adam(p, lr=3e-3)),
]


@pytest.mark.parametrize(("kind", "kwargs", "reference"), CONFIGS)
def test_one_member_matches_torch_optim(kind, kwargs, reference):
    ours = [p.clone().requires_grad_() for p in _init(1)]
    theirs = [p[0].clone().requires_grad_() for p in _init(1)]
    opt = StackedOptimizer(ours, kind=kind, **kwargs)
    ref = reference(theirs)
    for grads in _grads(25, 1):
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g[0].clone()
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p[0].detach(), q.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("kind", "kwargs", "reference"), CONFIGS)
def test_masked_members_do_not_change_and_others_match_torch(kind, kwargs, reference):
    """Member 1 is masked on some steps and must not move at all on those (no momentum drift, no
    weight decay, no Adam step); member 0 is never masked and matches torch.optim."""
    params = [p.clone().requires_grad_() for p in _init(3)]
    opt = StackedOptimizer(params, kind=kind, **kwargs)
    ref_params = [p[0].clone().requires_grad_() for p in _init(3)]
    ref = reference(ref_params)
    # member 1 trains alone with torch too, on the steps where it is active
    ref1_params = [p[1].clone().requires_grad_() for p in _init(3)]
    ref1 = reference(ref1_params)
    for step, grads in enumerate(_grads(20, 3)):
        active = torch.tensor([True, step % 3 != 1, False])
        before = [p.detach().clone() for p in params]
        state_before = {k: [t.clone() for t in v] for k, v in opt.state.items()}
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step(active)
        for p, b in zip(params, before):
            assert torch.equal(p[2], b[2])
            if not active[1]:
                assert torch.equal(p[1], b[1])
        for k, v in opt.state.items():
            for t, tb in zip(v, state_before[k]):
                assert torch.equal(t[2], tb[2])
                if not active[1]:
                    assert torch.equal(t[1], tb[1])
        for q, g in zip(ref_params, grads):
            q.grad = g[0].clone()
        ref.step()
        if active[1]:
            for q, g in zip(ref1_params, grads):
                q.grad = g[1].clone()
            ref1.step()
    for p, q, q1 in zip(params, ref_params, ref1_params):
        torch.testing.assert_close(p[0].detach(), q.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(p[1].detach(), q1.detach(), rtol=1e-6, atol=1e-7)


def test_per_member_learning_rates():
    params = [torch.ones(2, 3, requires_grad=True)]
    opt = StackedOptimizer(params, kind="sgd", lr=1.0)
    opt.set_lr([0.1, 0.5])
    params[0].grad = torch.ones(2, 3)
    opt.step()
    torch.testing.assert_close(params[0].detach(), torch.tensor([[0.9] * 3, [0.5] * 3]))


@pytest.mark.parametrize("mode", ["min", "max"])
def test_plateau_matches_reduce_lr_on_plateau(mode):
    rng = np.random.default_rng(0)
    values = np.cumsum(rng.normal(size=40)) * (1 if mode == "min" else -1)
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=2)
    ours = PlateauSchedule(3, mode=mode, factor=0.5, patience=2)
    lr = np.array([1.0])
    for v in values:
        ref.step(float(v))
        lr = ours.step([1], [v], lr)
        assert lr[0] == opt.param_groups[0]["lr"]
    assert lr[0] < 1.0  # the sequence does plateau


def test_step_schedule_matches_step_lr():
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    for epoch in range(1, 12):
        assert step_schedule_factor(epoch, 3, 0.5) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        ref.step()


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_per_member_momentum_and_weight_decay_match_torch_optim(kind):
    """Members with their own lr, momentum and weight decay (configurations stacked together)
    each match torch.optim run with their own values; with a mask, too."""
    values = [dict(lr=0.05, momentum=0.9, weight_decay=1e-3), dict(lr=0.2, momentum=0.0, weight_decay=0.0),
              dict(lr=0.01, momentum=0.5, weight_decay=1e-2)]
    params = [p.clone().requires_grad_() for p in _init(3)]
    opt = StackedOptimizer(params, kind=kind, **{k: [v[k] for v in values] for k in values[0]})
    refs, ref_params = [], []
    for m, v in enumerate(values):
        ps = [p[m].clone().requires_grad_() for p in _init(3)]
        ref_params.append(ps)
        if kind == "sgd":
            refs.append(torch.optim.SGD(ps, lr=v["lr"], momentum=v["momentum"], weight_decay=v["weight_decay"]))
        else:
            refs.append(torch.optim.Adam(ps, lr=v["lr"], weight_decay=v["weight_decay"]))
    for step, grads in enumerate(_grads(20, 3)):
        active = [True, step % 4 != 1, True]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step(torch.tensor(active))
        for m, (ref, ps) in enumerate(zip(refs, ref_params)):
            if active[m]:
                for q, g in zip(ps, grads):
                    q.grad = g[m].clone()
                ref.step()
    for m, ps in enumerate(ref_params):
        for p, q in zip(params, ps):
            torch.testing.assert_close(p[m].detach(), q.detach(), rtol=1e-5, atol=1e-6)
