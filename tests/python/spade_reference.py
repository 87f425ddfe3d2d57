"""A PyTorch SPADE (generator, VAE encoder, multi-scale discriminator) for tests/spade.rs,
written from the published design (Park et al. 2019, NVlabs' module and parameter names) and
CheSS's settings: 1-channel images, 2-class label maps, the VAE, hinge loss, a perceptual loss on
a 1-channel ResNet-18 at [stem, layer1..4] with weights [1/32 .. 1] x 10, optional feature
matching, Adam with TTUR (G 1e-4, D 4e-4, betas (0, 0.9)).

Usage: spade_reference.py OUT_DIR --data DATA_DIR --norm batch|instance [--feat]

Writes OUT_DIR/net_G.pt, net_E.pt, net_D.pt (initial state dicts), perceptual.pt (the frozen
ResNet-18) and steps.pt: the inputs (`seg`, `real`, `eps.{i}.{g,d}`), then per iteration i
(a G step then a D step, as NVlabs' trainer runs them) the fake image, mu, logvar, the loss
terms, the states of the three networks after the iteration (`after{i}.{G,E,D}.{key}`) and
their parameters' gradients (`grad{i}.{G,E,D}.{name}`: G and E from the G step, D from the D step);
finally an evaluation-mode generator output `eval.fake` for `eval.z`. Prints JSON metadata:
the state-dict keys and shapes in order, and the loss values.
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.nn.utils import spectral_norm

from losses_reference import SPADE_WEIGHTS, stages

CONFIG = dict(label_nc=2, image_nc=1, ngf=4, ndf=8, z_dim=16, crop=64, encoder_size=256, d_layers=4, d_scales=2)
IMAGES = ["NORMAL/IM-0001-0001.jpeg", "PNEUMONIA/person100_bacteria_475.jpeg"]


def xavier(module):
    """NVlabs' default init: xavier_normal_(gain 0.02) on conv and linear weights, zero bias."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight_orig if hasattr(m, "weight_orig") else m.weight
            nn.init.xavier_normal_(w.data, gain=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias.data)


class SPADE(nn.Module):
    def __init__(self, channels, label_nc, norm):
        super().__init__()
        if norm == "batch":
            self.param_free_norm = nn.BatchNorm2d(channels, affine=False)
        else:
            self.param_free_norm = nn.InstanceNorm2d(channels, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, 128, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(128, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(128, channels, 3, padding=1)

    def forward(self, x, seg):
        seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        h = self.mlp_shared(seg)
        return self.param_free_norm(x) * (1 + self.mlp_gamma(h)) + self.mlp_beta(h)


class Block(nn.Module):
    def __init__(self, fin, fout, label_nc, norm):
        super().__init__()
        mid = min(fin, fout)
        self.learned = fin != fout
        self.conv_0 = spectral_norm(nn.Conv2d(fin, mid, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(mid, fout, 3, padding=1))
        if self.learned:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
        self.norm_0 = SPADE(fin, label_nc, norm)
        self.norm_1 = SPADE(mid, label_nc, norm)
        if self.learned:
            self.norm_s = SPADE(fin, label_nc, norm)

    def forward(self, x, seg):
        xs = self.conv_s(self.norm_s(x, seg)) if self.learned else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return xs + dx


class Generator(nn.Module):
    def __init__(self, c, norm):
        super().__init__()
        nf, self.s = c["ngf"], c["crop"] // 32
        self.nf = nf
        self.fc = nn.Linear(c["z_dim"], 16 * nf * self.s * self.s)
        chans = [(16, 16), (16, 16), (16, 16), (16, 8), (8, 4), (4, 2), (2, 1)]
        names = ["head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3"]
        for name, (a, b) in zip(names, chans):
            setattr(self, name, Block(a * nf, b * nf, c["label_nc"], norm))
        self.names = names
        self.conv_img = nn.Conv2d(nf, c["image_nc"], 3, padding=1)

    def forward(self, seg, z):
        x = self.fc(z).view(-1, 16 * self.nf, self.s, self.s)
        for i, name in enumerate(self.names):
            if i not in (0, 2):
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = getattr(self, name)(x, seg)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


def sn_in(conv):
    """Spectral norm on a bias-free conv, then instance norm (NVlabs' 'spectralinstance')."""
    return nn.Sequential(spectral_norm(conv), nn.InstanceNorm2d(conv.out_channels, affine=False))


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.size = c["encoder_size"]
        n = int(np.log2(self.size // 4))
        cin, ndf = c["image_nc"], c["ngf"]
        for i in range(n):
            cout = ndf * [1, 2, 4, 8][min(i, 3)]
            setattr(self, f"layer{i + 1}", sn_in(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)))
            cin = cout
        self.n = n
        self.fc_mu = nn.Linear(cin * 16, c["z_dim"])
        self.fc_var = nn.Linear(cin * 16, c["z_dim"])

    def forward(self, x):
        if x.shape[2] != self.size or x.shape[3] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        for i in range(self.n):
            if i > 0:
                x = F.leaky_relu(x, 0.2)
            x = getattr(self, f"layer{i + 1}")(x)
        x = F.leaky_relu(x, 0.2).flatten(1)
        return self.fc_mu(x), self.fc_var(x)


class PatchGAN(nn.Module):
    def __init__(self, cin, ndf, n_layers):
        super().__init__()
        seq = [nn.Sequential(nn.Conv2d(cin, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2))]
        nf = ndf
        for n in range(1, n_layers):
            prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == n_layers - 1 else 2
            seq.append(nn.Sequential(sn_in(nn.Conv2d(prev, nf, 4, stride=stride, padding=2, bias=False)),
                                     nn.LeakyReLU(0.2)))
        seq.append(nn.Sequential(nn.Conv2d(nf, 1, 4, stride=1, padding=2)))
        for i, m in enumerate(seq):
            self.add_module(f"model{i}", m)

    def forward(self, x):
        outs = []
        for m in self.children():
            x = m(x)
            outs.append(x)
        return outs


class Discriminator(nn.Module):
    def __init__(self, c):
        super().__init__()
        for i in range(c["d_scales"]):
            self.add_module(f"discriminator_{i}", PatchGAN(c["label_nc"] + c["image_nc"], c["ndf"], c["d_layers"]))

    def forward(self, x):
        out = []
        for d in self.children():
            out.append(d(x))
            x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return out


def hinge_d(preds, real):
    total = 0
    for p in preds:
        x = p[-1]
        total = total + (F.relu(1 - x).mean() if real else F.relu(1 + x).mean())
    return total / len(preds)


def hinge_g(preds):
    return sum(-p[-1].mean() for p in preds) / len(preds)


def perceptual(model, fake, real):
    """10 x sum_s w_s L1(f_s(fake), f_s(real)) on 0..255 images, CheSS normalisation."""
    norm = lambda t: ((t + 1) * 127.5 / 255 - 0.658) / 0.221  # noqa: E731
    fx = stages(model, norm(fake))
    with torch.no_grad():
        fy = stages(model, norm(real))
    return 10.0 * sum(w * F.l1_loss(a, b) for w, a, b in zip(SPADE_WEIGHTS, fx, fy))


def split(preds):
    """Each scale's outputs halved along the batch: (fake, real)."""
    fake = [[t[: t.shape[0] // 2] for t in p] for p in preds]
    real = [[t[t.shape[0] // 2:] for t in p] for p in preds]
    return fake, real


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--data", required=True)
    ap.add_argument("--norm", default="batch")
    ap.add_argument("--feat", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    c = CONFIG
    G, E, D = Generator(c, args.norm), Encoder(c), Discriminator(c)
    for m in (G, E, D):
        xavier(m)
    # Non-trivial weights everywhere: the xavier(0.02) init leaves SPADE's gamma and beta tiny.
    with torch.no_grad():
        for m in (G, E, D):
            for name, p in m.named_parameters():
                if name.endswith("bias"):
                    p.copy_(0.05 * torch.randn_like(p))
                elif "mlp_" in name or name.startswith("fc") or "conv_img" in name:
                    p.copy_(0.1 * torch.randn_like(p))
    res = torchvision.models.resnet18()
    res.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    with torch.no_grad():
        for m in res.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
    res.eval().requires_grad_(False)
    os.makedirs(args.out, exist_ok=True)
    torch.save(res.state_dict(), os.path.join(args.out, "perceptual.pt"))
    for name, m in (("G", G), ("E", E), ("D", D)):
        torch.save(m.state_dict(), os.path.join(args.out, f"net_{name}.pt"))

    # Real radiographs at 64 px in -1..1 and circular nodule masks as one-hot maps.
    imgs = []
    for name in IMAGES:
        img = Image.open(os.path.join(args.data, "cxr-pneumonia-224/test", name)).convert("L")
        img = img.resize((c["crop"], c["crop"]), Image.BILINEAR)
        imgs.append(torch.from_numpy(np.asarray(img, dtype=np.float32).copy()))
    real = (torch.stack(imgs).unsqueeze(1) / 127.5) - 1
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    masks = [((xx - 20) ** 2 + (yy - 30) ** 2 <= 36).long(), ((xx - 44) ** 2 + (yy - 24) ** 2 <= 81).long()]
    labels = torch.stack(masks).unsqueeze(1)
    seg = torch.zeros(2, 2, 64, 64).scatter_(1, labels, 1.0)

    opt_g = torch.optim.Adam(list(G.parameters()) + list(E.parameters()), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.9))
    out = {"seg": seg, "labels": labels.float(), "real": real}
    meta = {"keys": {}, "losses": []}
    for name, m in (("G", G), ("E", E), ("D", D)):
        meta["keys"][name] = [[k, list(v.shape)] for k, v in m.state_dict().items()]
    lambda_feat = 10.0 if args.feat else None
    for i in range(2):
        eps_g, eps_d = torch.randn(2, c["z_dim"]), torch.randn(2, c["z_dim"])
        out[f"eps.{i}.g"], out[f"eps.{i}.d"] = eps_g, eps_d
        # Generator step.
        opt_g.zero_grad()
        mu, logvar = E(real)
        z = eps_g * torch.exp(0.5 * logvar) + mu
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) * 0.05
        fake = G(seg, z)
        preds = D(torch.cat([torch.cat([seg, fake], 1), torch.cat([seg, real], 1)], 0))
        pf, pr = split(preds)
        gan = hinge_g(pf)
        terms = {"gan": gan, "kld": kld, "perceptual": perceptual(res, fake, real)}
        if lambda_feat is not None:
            feat = 0
            for a, b in zip(pf, pr):
                for x, y in zip(a[:-1], b[:-1]):
                    feat = feat + F.l1_loss(x, y.detach()) * lambda_feat / len(pf)
            terms["feat"] = feat
        g_total = sum(terms.values())
        g_total.backward()
        opt_g.step()
        out[f"step{i}.fake"], out[f"step{i}.mu"], out[f"step{i}.logvar"] = fake.detach(), mu.detach(), logvar.detach()
        for s, p in enumerate(pf):
            out[f"step{i}.pred_fake{s}"] = p[-1].detach()
        # Discriminator step: the fake from a no-grad generator pass in training mode.
        opt_d.zero_grad()
        with torch.no_grad():
            mu2, logvar2 = E(real)
            fake2 = G(seg, eps_d * torch.exp(0.5 * logvar2) + mu2)
        preds = D(torch.cat([torch.cat([seg, fake2], 1), torch.cat([seg, real], 1)], 0))
        pf, pr = split(preds)
        d_fake, d_real = hinge_d(pf, False), hinge_d(pr, True)
        (d_fake + d_real).backward()
        opt_d.step()
        losses = {k: float(v.detach()) for k, v in terms.items()}
        losses.update(g_total=float(g_total), d_fake=float(d_fake), d_real=float(d_real))
        meta["losses"].append(losses)
        for name, m in (("G", G), ("E", E), ("D", D)):
            for k, v in m.state_dict().items():
                out[f"after{i}.{name}.{k}"] = v.clone()
            for k, p in m.named_parameters():
                out[f"grad{i}.{name}.{k}"] = p.grad.clone()
    G.eval()
    with torch.no_grad():
        out["eval.z"] = torch.randn(2, c["z_dim"])
        out["eval.fake"] = G(seg, out["eval.z"])
    torch.save({k: v.contiguous() for k, v in out.items()}, os.path.join(args.out, "steps.pt"))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
