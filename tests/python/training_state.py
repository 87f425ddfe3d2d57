"""Loads a chess-rs training-state checkpoint (tests/training_run.rs) as PyTorch users would:
torch.load(weights_only=True), each module's and optimiser's load_state_dict, the scheduler's.

usage: training_state.py CHECKPOINT
"""
import sys

import torch


def main(path):
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == "chess-rs/training-state/1", ckpt["format"]
    body, head = torch.nn.Linear(16, 32), torch.nn.Linear(32, 2)
    body.load_state_dict(ckpt["models"]["body"])
    head.load_state_dict(ckpt["models"]["head"])
    opt_body = torch.optim.Adam(body.parameters(), lr=1e-2, weight_decay=1e-4)
    opt_head = torch.optim.AdamW(head.parameters(), lr=4e-3, betas=(0.0, 0.9))
    opt_body.load_state_dict(ckpt["optimizers"]["body"])
    opt_head.load_state_dict(ckpt["optimizers"]["head"])
    schedule = torch.optim.lr_scheduler.StepLR(opt_body, step_size=1, gamma=0.5)
    schedule.load_state_dict(ckpt["schedulers"]["body"])
    # The state the run ended in: 3 epochs of 12 steps, the body's lr halved after each epoch.
    steps = {float(s["step"]) for s in opt_body.state_dict()["state"].values()}
    assert steps == {36.0}, steps
    assert abs(opt_body.param_groups[0]["lr"] - 1.25e-3) < 1e-15, opt_body.param_groups[0]["lr"]
    assert schedule.last_epoch == 3, schedule.last_epoch
    assert opt_head.param_groups[0]["betas"] == (0.0, 0.9), opt_head.param_groups[0]["betas"]
    run = ckpt["run"]
    assert (run["epoch"], run["step_in_epoch"], run["global_step"]) == (3, 0, 36), run
    print(f"run {run}")
    print("loaded: models body, head; optimizers body (Adam), head (AdamW); schedulers body")


if __name__ == "__main__":
    main(sys.argv[1])
