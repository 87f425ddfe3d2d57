"""PyTorch references for tests/optim.rs: Adam/AdamW runs and learning-rate schedules, and
PyTorch loading (and continuing from) optimiser and scheduler state dicts written in Rust.

    optim_reference.py adam DIR              inputs.pth and <case>.pth for every Adam case
    optim_reference.py continue-adam DIR     loads rust_<case>.pth, runs the last steps
    optim_reference.py schedules DIR         prints cases with their lrs (JSON), writes py_sched_<case>.pth
    optim_reference.py continue-schedules DIR  loads rust_sched_<case>.pth, prints the lrs that follow
"""
import copy
import json
import sys

import torch
from torch.optim import lr_scheduler as L

SHAPES = [(4, 3), (5,), (2, 3, 2, 2)]
STEPS = 5
# Rust's state is saved after this many steps, and PyTorch's too for the reverse direction.
SPLIT = 3

ADAM_CASES = {
    "adam": ("Adam", dict(lr=1e-2)),
    "adam_weight_decay": ("Adam", dict(lr=1e-2, weight_decay=0.1)),
    "adam_gan_betas": ("Adam", dict(lr=2e-4, betas=(0.0, 0.9))),
    "adam_amsgrad": ("Adam", dict(lr=1e-2, weight_decay=0.05, amsgrad=True)),
    "adamw": ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
    "adamw_gan_betas": ("AdamW", dict(lr=1e-3, betas=(0.0, 0.9))),
    "adamw_amsgrad": ("AdamW", dict(lr=1e-2, betas=(0.5, 0.999), weight_decay=0.01, amsgrad=True)),
}


def inputs():
    """Initial parameters and per-step gradients; parameter 2 has no gradient at step 0 (its
    state starts a step later), and step 2's gradients are 1000 times larger."""
    g = torch.Generator().manual_seed(1234)
    params = [torch.randn(s, generator=g) for s in SHAPES]
    grads = []
    for step in range(STEPS):
        scale = 1000.0 if step == 2 else 1.0
        grads.append([None if (step == 0 and i == 2) else torch.randn(s, generator=g) * scale
                      for i, s in enumerate(SHAPES)])
    return params, grads


def make(kind, kwargs, params):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    return ps, getattr(torch.optim, kind)(ps, **kwargs)


def run_steps(ps, opt, grads, steps):
    for step in steps:
        for p, gr in zip(ps, grads[step]):
            p.grad = None if gr is None else gr.clone()
        opt.step()


def adam(out):
    params, grads = inputs()
    torch.save({"params": params, "grads": grads}, f"{out}/inputs.pth")
    for name, (kind, kwargs) in ADAM_CASES.items():
        ps, opt = make(kind, kwargs, params)
        run_steps(ps, opt, grads, range(SPLIT))
        mid = {"params": [p.detach().clone() for p in ps], "state": copy.deepcopy(opt.state_dict())}
        run_steps(ps, opt, grads, range(SPLIT, STEPS))
        torch.save({"mid": mid, "params": [p.detach().clone() for p in ps], "state": opt.state_dict()},
                   f"{out}/{name}.pth")


def continue_adam(out):
    _, grads = inputs()
    for name, (kind, kwargs) in ADAM_CASES.items():
        saved = torch.load(f"{out}/rust_{name}.pth", weights_only=True)
        # A different lr at construction: load_state_dict must bring back the saved one.
        ps, opt = make(kind, dict(kwargs, lr=123.0), saved["params"])
        opt.load_state_dict(saved["state"])
        assert opt.param_groups[0]["lr"] == kwargs["lr"], opt.param_groups[0]
        run_steps(ps, opt, grads, range(SPLIT, STEPS))
        torch.save({"params": [p.detach().clone() for p in ps], "state": opt.state_dict()},
                   f"{out}/py_cont_{name}.pth")


def plateau_case(base_lr, metrics, **kwargs):
    return {"kind": "plateau", "base_lr": base_lr, "metrics": metrics, "args": kwargs}


DOWN_THEN_FLAT = [1.0, 0.9, 0.8, 0.8, 0.8, 0.79995, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7,
                  0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
UP_THEN_FLAT = [0.1, 0.2, 0.25, 0.26, 0.3, 0.3, 0.45, 0.5, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9,
                0.9, 0.9]

SCHEDULE_CASES = {
    "cosine": {"kind": "cosine", "base_lr": 0.1, "t_max": 10, "eta_min": 0.001, "epochs": 25},
    "cosine_zero_min": {"kind": "cosine", "base_lr": 0.03, "t_max": 7, "eta_min": 0.0, "epochs": 16},
    "step": {"kind": "step", "base_lr": 0.1, "step_size": 3, "gamma": 0.5, "epochs": 12},
    "multistep": {"kind": "multistep", "base_lr": 0.1, "milestones": [4, 7, 7], "gamma": 0.1, "epochs": 10},
    "multistep_moco": {"kind": "multistep", "base_lr": 0.03, "milestones": [120, 160], "gamma": 0.1,
                       "epochs": 200},
    "linear_pix2pix": {"kind": "linear", "rule": "pix2pix", "base_lr": 2e-4, "n_epochs": 5,
                       "n_epochs_decay": 5, "epochs": 10},
    "linear_spade": {"kind": "linear", "rule": "spade", "base_lr": 2e-4, "n_epochs": 5,
                     "n_epochs_decay": 5, "epochs": 10},
    "plateau_min_rel": plateau_case(0.1, DOWN_THEN_FLAT, mode="min", factor=0.5, patience=2,
                                    threshold=1e-4, threshold_mode="rel", cooldown=1, min_lr=0.01),
    "plateau_min_abs": plateau_case(0.1, DOWN_THEN_FLAT, mode="min", factor=0.3, patience=1,
                                    threshold=0.05, threshold_mode="abs", cooldown=0, min_lr=0.001),
    "plateau_max_rel": plateau_case(1.0, UP_THEN_FLAT, mode="max", factor=0.1, patience=1,
                                    threshold=0.1, threshold_mode="rel", cooldown=2, min_lr=1e-3),
    "plateau_max_abs": plateau_case(1.0, UP_THEN_FLAT, mode="max", factor=0.5, patience=0,
                                    threshold=0.02, threshold_mode="abs", cooldown=1, min_lr=0.2,
                                    eps=1e-8),
}


def make_schedule(case):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=case["base_lr"], momentum=0.9)
    kind = case["kind"]
    if kind == "cosine":
        s = L.CosineAnnealingLR(opt, T_max=case["t_max"], eta_min=case["eta_min"])
    elif kind == "step":
        s = L.StepLR(opt, step_size=case["step_size"], gamma=case["gamma"])
    elif kind == "multistep":
        s = L.MultiStepLR(opt, milestones=case["milestones"], gamma=case["gamma"])
    elif kind == "linear":
        n, decay = case["n_epochs"], case["n_epochs_decay"]
        if case["rule"] == "pix2pix":
            s = L.LambdaLR(opt, lambda e: 1.0 if e < n else 1 - (e - n + 1) / (decay + 1))
        else:
            s = L.LambdaLR(opt, lambda e: 1.0 if e <= n else 1 - (e - n) / decay)
    else:
        s = L.ReduceLROnPlateau(opt, **case["args"])
    return p, opt, s


def epochs(case):
    return len(case["metrics"]) if case["kind"] == "plateau" else case["epochs"]


def step(p, opt, s, case, epoch):
    p.grad = torch.ones_like(p)
    opt.step()
    if case["kind"] == "plateau":
        s.step(case["metrics"][epoch])
    else:
        s.step()
    return opt.param_groups[0]["lr"]


def exact(v):
    """Floats as their shortest repr strings: JSON readers need not round numbers correctly
    (serde_json's default does not), Rust's `str::parse::<f64>` does."""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, dict):
        return {k: exact(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [exact(x) for x in v]
    return v


def schedules(out):
    result = {}
    for name, case in SCHEDULE_CASES.items():
        p, opt, s = make_schedule(case)
        lrs = [opt.param_groups[0]["lr"]]
        split = epochs(case) // 2
        for epoch in range(epochs(case)):
            lrs.append(step(p, opt, s, case, epoch))
            if epoch + 1 == split:
                torch.save({"optimizer": copy.deepcopy(opt.state_dict()), "scheduler": copy.deepcopy(s.state_dict())},
                           f"{out}/py_sched_{name}.pth")
        result[name] = dict(case, lrs=lrs, split=split)
    print(json.dumps(exact(result)))


def continue_schedules(out):
    result = {}
    for name, case in SCHEDULE_CASES.items():
        saved = torch.load(f"{out}/rust_sched_{name}.pth", weights_only=True)
        p, opt, s = make_schedule(case)
        opt.load_state_dict(saved["optimizer"])
        s.load_state_dict(saved["scheduler"])
        split = epochs(case) // 2
        lrs = [opt.param_groups[0]["lr"]]
        for epoch in range(split, epochs(case)):
            lrs.append(step(p, opt, s, case, epoch))
        result[name] = lrs
    print(json.dumps(exact(result)))


if __name__ == "__main__":
    torch.set_num_threads(1)
    command, out = sys.argv[1], sys.argv[2]
    {"adam": adam, "continue-adam": continue_adam, "schedules": schedules,
     "continue-schedules": continue_schedules}[command](out)
