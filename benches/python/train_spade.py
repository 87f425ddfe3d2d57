"""The SPADE generator and discriminator steps in PyTorch, the baseline of `nodule_gan train`'s
step: the networks of tests/python/spade_reference.py (NVlabs' design, 1 channel, 2-class label
maps, the VAE), a G step (hinge, KLD 0.05, perceptual 10 on a frozen 1-channel ResNet-50) then a
D step, Adam G 1e-4 / D 4e-4, betas (0, 0.9); optional bf16 autocast. Random label maps and
images (the same every step), for timing the step alone. Prints one JSON line.

    train_spade.py --image-size 128 --ngf 32 --ndf 64 --batch-size 2 --steps 8
"""
import os
import sys

import torch
import torch.nn as nn
import torchvision

from step_timing import memory_format, parser, setup, time_steps

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tests/python"))
import spade_reference as ref  # noqa: E402


def main():
    p = parser(__doc__, 2, 128)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--z-dim", type=int, default=256)
    p.add_argument("--encoder-size", type=int, default=128)
    a = p.parse_args()
    device, dtype = setup(a)
    c = dict(ref.CONFIG, ngf=a.ngf, ndf=a.ndf, z_dim=a.z_dim, crop=a.image_size, encoder_size=a.encoder_size)
    G, E, D = ref.Generator(c, "batch").to(device), ref.Encoder(c).to(device), ref.Discriminator(c).to(device)
    res = torchvision.models.resnet50()
    res.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    res = res.to(device).eval().requires_grad_(False)
    mf = memory_format(a)
    G, E, D, res = (m.to(memory_format=mf) for m in (G, E, D, res))
    opt_g = torch.optim.Adam(list(G.parameters()) + list(E.parameters()), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.9))
    n, s = a.batch_size, a.image_size
    labels = (torch.rand(n, 1, s, s, device=device) > 0.9).long()
    seg = torch.zeros(n, 2, s, s, device=device).scatter_(1, labels, 1.0)
    real = (torch.rand(n, 1, s, s, device=device) * 2 - 1).contiguous(memory_format=mf)
    seg = seg.contiguous(memory_format=mf)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def step():
        opt_g.zero_grad()
        with autocast():
            mu, logvar = E(real)
            mu, logvar = mu.float(), logvar.float()
            z = torch.randn_like(mu) * torch.exp(0.5 * logvar) + mu
            fake = G(seg, z)
            pf, _ = ref.split(D(torch.cat([torch.cat([seg, fake], 1), torch.cat([seg, real], 1)], 0)))
        fake = fake.float()
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) * 0.05
        g = ref.hinge_g([[x.float() for x in p] for p in pf]) + kld + ref.perceptual(res, fake, real)
        g.backward()
        opt_g.step()
        opt_d.zero_grad()
        with autocast():
            with torch.no_grad():
                mu2, logvar2 = E(real)
                fake2 = G(seg, torch.randn_like(mu2.float()) * torch.exp(0.5 * logvar2.float()) + mu2.float())
            pf, pr = ref.split(D(torch.cat([torch.cat([seg, fake2.to(seg.dtype)], 1), torch.cat([seg, real], 1)], 0)))
        d = ref.hinge_d([[x.float() for x in p] for p in pf], False) + ref.hinge_d([[x.float() for x in p] for p in pr], True)
        d.backward()
        opt_d.step()
        return g + d

    time_steps(a, step)


if __name__ == "__main__":
    main()
