"""The CheSS classification fine-tuning step in PyTorch, the baseline of `classify train`'s step:
torchvision ResNet with a one-channel stem and a linear head of L labels, BCE with logits (fp32,
outside autocast), SGD lr 1e-3 momentum 0.9, optional bf16/fp16 autocast and channels_last.
Random inputs and targets (the same every step), for timing the step alone. Prints one JSON line.

    train_classify.py --arch resnet50 --batch-size 16 --image-size 224 --labels 14 --steps 8
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from step_timing import memory_format, parser, setup, time_steps


def main():
    p = parser(__doc__, 16, 224, amps=("off", "bf16", "fp16"))
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--labels", type=int, default=14)
    a = p.parse_args()
    device, dtype = setup(a)
    model = getattr(torchvision.models, a.arch)(num_classes=a.labels)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model = model.to(device).train()
    mf = memory_format(a)
    model = model.to(memory_format=mf)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(enabled=a.amp == "fp16")
    x = torch.randn(a.batch_size, 1, a.image_size, a.image_size, device=device).contiguous(memory_format=mf)
    y = (torch.rand(a.batch_size, a.labels, device=device) > 0.5).float()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    time_steps(a, step)


if __name__ == "__main__":
    main()
