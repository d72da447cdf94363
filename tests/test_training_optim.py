"""Optimizers and schedules against ``torch.optim``: the same weights after five steps given
the same gradients, and the same learning rate in every epoch."""

from __future__ import annotations

import numpy as np
import pytest

from cnnc.compiler import UsageError
from cnnc.training.optim import make_optimizer
from cnnc.training.schedule import parse_schedule

OPTIMIZERS = [
    ("sgd", dict(), dict(momentum=0.0)),
    ("sgd", dict(momentum=0.9), dict(momentum=0.9)),
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=5e-4), dict(momentum=0.9)),
    ("sgd", dict(momentum=0.5, weight_decay=0.1), dict(momentum=0.5)),
    ("adam", dict(), dict()),
    ("adam", dict(weight_decay=0.01), dict()),
    ("adamw", dict(), dict()),
    ("adamw", dict(weight_decay=0.1), dict()),
]


def torch_optimizer(torch, name, params, lr, kw):
    kw = dict(kw)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, **kw)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, **kw)
    return torch.optim.AdamW(params, lr=lr, **kw)


@pytest.mark.parametrize("name,kw,_", OPTIMIZERS, ids=lambda v: str(v))
def test_five_steps_equal_torch_optim(name, kw, _, torch):
    rng = np.random.default_rng(0)
    weights = {
        "a.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "a.bias": rng.standard_normal(4).astype(np.float32),
        "b.weight": rng.standard_normal((5, 7)).astype(np.float32),
    }
    grads = [
        {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in weights.items()}
        for _ in range(5)
    ]
    rates = [0.1, 0.1, 0.05, 0.02, 0.3]  # a schedule changes the rate between steps
    params = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in weights.items()}
    ref = torch_optimizer(torch, name, list(params.values()), rates[0], kw)
    ours = make_optimizer(name, **kw)
    for lr, g in zip(rates, grads):
        for group in ref.param_groups:
            group["lr"] = lr
        for k, p in params.items():
            p.grad = torch.tensor(g[k])
        ref.step()
        ours.step(weights, g, lr)
    for k, p in params.items():
        want = p.detach().numpy()
        err = np.abs(weights[k] - want).max() / np.abs(want).max()
        assert err <= 1e-5, (k, err)


def test_a_key_without_gradient_is_left_alone_as_torch_skips_a_none_grad():
    w = {"a.weight": np.ones(3, np.float32), "b.weight": np.ones(3, np.float32)}
    opt = make_optimizer("adamw", weight_decay=0.5)
    opt.step(w, {"a.weight": np.ones(3, np.float32)}, 0.1)
    assert np.array_equal(w["b.weight"], np.ones(3, np.float32))
    assert not np.array_equal(w["a.weight"], np.ones(3, np.float32))
    assert set(opt.state()["arrays"]) == {"exp_avg.a.weight", "exp_avg_sq.a.weight"}


def test_state_restores_into_a_fresh_optimizer_and_continues_identically():
    rng = np.random.default_rng(1)
    w1 = {"k": rng.standard_normal(6).astype(np.float32)}
    w2 = {"k": w1["k"].copy()}
    grads = [{"k": rng.standard_normal(6).astype(np.float32)} for _ in range(4)]
    a = make_optimizer("adam")
    for g in grads:
        a.step(w1, g, 0.01)
    b = make_optimizer("adam")
    for g in grads[:2]:
        b.step(w2, g, 0.01)
    c = make_optimizer("adam")
    c.restore(b.state())
    for g in grads[2:]:
        c.step(w2, g, 0.01)
    assert np.array_equal(w1["k"], w2["k"])


def torch_rates(torch, kind, lr, epochs, warmup, step_size=0, gamma=1.0):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr)
    S = torch.optim.lr_scheduler
    if kind == "constant":
        main = S.ConstantLR(opt, factor=1.0, total_iters=0)
    elif kind == "step":
        main = S.StepLR(opt, step_size=step_size, gamma=gamma)
    else:
        main = S.CosineAnnealingLR(opt, T_max=epochs - warmup)
    sched = main
    if warmup:
        ramp = S.LinearLR(opt, start_factor=1 / (warmup + 1), total_iters=warmup)
        sched = S.SequentialLR(opt, [ramp, main], milestones=[warmup])
    rates = []
    for _ in range(epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


SCHEDULES = [
    ("constant", 0, "constant"),
    ("step:3:0.5", 0, ("step", 3, 0.5)),
    ("step:1:0.9", 0, ("step", 1, 0.9)),
    ("cosine", 0, "cosine"),
    ("constant", 3, "constant"),
    ("step:2:0.1", 2, ("step", 2, 0.1)),
    ("cosine", 4, "cosine"),
    ("cosine", 1, "cosine"),
]


@pytest.mark.parametrize("text,warmup,kind", SCHEDULES, ids=lambda v: str(v))
def test_schedule_rate_per_epoch_equals_torch(text, warmup, kind, torch):
    epochs, lr = 12, 0.1
    ours = parse_schedule(text, lr, epochs, warmup)
    if isinstance(kind, tuple):
        want = torch_rates(torch, "step", lr, epochs, warmup, kind[1], kind[2])
    else:
        want = torch_rates(torch, kind, lr, epochs, warmup)
    got = [ours.rate(e) for e in range(epochs)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("text", ["linear", "step", "step:0:0.1", "step:2:x", "cosine:3", ""])
def test_bad_schedules_are_usage_errors(text):
    with pytest.raises(UsageError, match="--schedule"):
        parse_schedule(text, 0.1, 10)


def test_bad_optimizer_settings_are_usage_errors():
    with pytest.raises(UsageError, match="unknown optimizer"):
        make_optimizer("rmsprop")
    with pytest.raises(UsageError, match="nesterov"):
        make_optimizer("sgd", nesterov=True)
    with pytest.raises(UsageError, match="SGD's"):
        make_optimizer("adam", momentum=0.9)
    with pytest.raises(UsageError, match="--lr"):
        parse_schedule("constant", 0.0, 10)
