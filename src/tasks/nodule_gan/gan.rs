//! The SPADE GAN of a training run: generator, VAE encoder and discriminator with their Adam
//! optimisers (TTUR), and one generator step and one discriminator step as NVlabs' trainer runs
//! them (G first, then D, on the same batch).
use std::sync::Arc;

use tch::{Device, Kind, Tensor, nn};

use crate::Precision;
use crate::distributed::{DataParallel, ProcessGroup};
use crate::losses::{PerceptualLoss, feature_matching, hinge_discriminator, hinge_generator, kld};
use crate::model::spade::reparameterize;
use crate::model::{
    ConvEncoder, ModelError, MultiscaleDiscriminator, SpadeConfig, SpadeGenerator, StateDict,
};
use crate::optim::{Adam, AdamConfig, OptimError, Optimizer};

/// The generator's loss terms and their weights. [`LossWeights::default`] is CheSS's.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossWeights {
    /// VAE KL divergence (`lambda_kld`).
    pub kld: f64,
    /// Discriminator feature matching (`lambda_feat`); `None` is `--no_ganFeat_loss`.
    pub feat: Option<f64>,
    /// The perceptual loss (`lambda_vgg`, CheSS features in place of VGG's).
    pub perceptual: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self { kld: 0.05, feat: None, perceptual: 10.0 }
    }
}

/// The learning rates: TTUR's G `lr / 2` and D `2 lr` of SPADE's base 2e-4, with betas (0, 0.9).
pub fn adam_configs(lr_g: f64, lr_d: f64) -> (AdamConfig, AdamConfig) {
    let base = AdamConfig { betas: (0.0, 0.9), ..AdamConfig::adam() };
    (AdamConfig { lr: lr_g, ..base }, AdamConfig { lr: lr_d, ..base })
}

/// Named loss values of a step, detached.
pub type LossTerms = Vec<(&'static str, Tensor)>;

/// The generator's outputs of a step, kept for inspection.
#[derive(Debug)]
pub struct GeneratorOut {
    pub fake: Tensor,
    pub mu: Tensor,
    pub logvar: Tensor,
    /// Each scale's prediction on the fake images.
    pub pred_fake: Vec<Tensor>,
}

/// Why a GAN could not be built or stepped.
#[derive(Debug, thiserror::Error)]
pub enum GanError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Distributed(#[from] crate::distributed::DistError),
    #[error("{0}")]
    Input(String),
}

/// Generator, encoder and discriminator, their optimisers and the loss settings.
pub struct SpadeGan {
    pub config: SpadeConfig,
    pub g: SpadeGenerator,
    pub e: ConvEncoder,
    pub d: MultiscaleDiscriminator,
    /// Adam over the generator's then the encoder's parameters (NVlabs' `G_params`).
    pub opt_g: Adam,
    pub opt_d: Adam,
    pub weights: LossWeights,
    pub perceptual: Option<PerceptualLoss>,
    pub precision: Precision,
    pub device: Device,
    /// NHWC weights and inputs (see [`SpadeGan::use_channels_last`]).
    channels_last: bool,
    /// Under torchrun: gradient averaging for the generator and encoder, and for the
    /// discriminator (see [`SpadeGan::with_data_parallel`]).
    dp: Option<(DataParallel, DataParallel)>,
    _vs: nn::VarStore,
}

impl SpadeGan {
    /// Fresh networks (NVlabs' init, drawn from libtorch's global generator).
    pub fn new(
        config: SpadeConfig,
        device: Device,
        (adam_g, adam_d): (AdamConfig, AdamConfig),
        weights: LossWeights,
        perceptual: Option<PerceptualLoss>,
    ) -> Result<Self, GanError> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let g = SpadeGenerator::new(&(&root / "G"), config)?;
        let e = ConvEncoder::new(&(&root / "E"), config)?;
        let d = MultiscaleDiscriminator::new(&(&root / "D"), config)?;
        let mut g_params = g.parameters();
        g_params.extend(e.parameters());
        let opt_g = Adam::new(g_params, adam_g);
        let opt_d = Adam::new(d.parameters(), adam_d);
        Ok(Self {
            config,
            g,
            e,
            d,
            opt_g,
            opt_d,
            weights,
            perceptual,
            precision: Precision::F32,
            device,
            channels_last: false,
            dp: None,
            _vs: vs,
        })
    }

    /// Data parallelism over `group`: the three networks start as rank 0's, each step's
    /// gradients are averaged over the ranks (the G step's over G and E, the D step's over D),
    /// and the buffers (batch-norm statistics, spectral-norm vectors) after each iteration.
    pub fn with_data_parallel(&mut self, group: Arc<ProcessGroup>) -> Result<(), GanError> {
        let state = |nets: &[&dyn StateDict]| -> Vec<Tensor> {
            nets.iter().flat_map(|n| n.named_tensors("")).map(|t| t.tensor).collect()
        };
        let dp_g = DataParallel::new(group.clone(), self.opt_g.params(), &state(&[&self.g, &self.e]))?;
        let dp_d = DataParallel::new(group, self.opt_d.params(), &state(&[&self.d]))?;
        self.dp = Some((dp_g, dp_d));
        Ok(())
    }

    /// `loss.backward()`, the gradients averaged over the ranks under torchrun (`of_d`: the
    /// discriminator's, else the generator's and encoder's).
    fn backward(&self, loss: &Tensor, of_d: bool) -> Result<(), GanError> {
        match &self.dp {
            Some((g, d)) => (if of_d { d } else { g }).backward(loss)?,
            None => loss.backward(),
        }
        Ok(())
    }

    /// Lays every conv weight out channels_last, and the inputs of later steps.
    pub fn use_channels_last(&mut self) -> Result<(), GanError> {
        let nets: [&dyn StateDict; 3] = [&self.g, &self.e, &self.d];
        for net in nets {
            let mut tensors: Vec<Tensor> = net.named_tensors("").into_iter().map(|t| t.tensor).collect();
            crate::device::set_channels_last(tensors.iter_mut())?;
        }
        self.channels_last = true;
        Ok(())
    }

    fn layout(&self, t: &Tensor) -> Result<Tensor, GanError> {
        Ok(if self.channels_last { crate::device::to_channels_last(t)? } else { t.shallow_clone() })
    }

    /// `z` of real images in -1..1: the encoder's `mu + eps * sigma`, `eps` drawn when `None`.
    pub fn encode(&self, real: &Tensor, eps: Option<&Tensor>, train: bool) -> (Tensor, Tensor, Tensor) {
        let (mu, logvar) = self.e.forward_t(real, train);
        let (mu, logvar) = (mu.to_kind(Kind::Float), logvar.to_kind(Kind::Float));
        let eps = match eps {
            Some(e) => e.to_device(mu.device()),
            None => Tensor::randn_like(&mu),
        };
        (reparameterize(&mu, &logvar, &eps), mu, logvar)
    }

    /// The discriminator on `[seg, fake]` and `[seg, real]` in one batch (as NVlabs runs it):
    /// per scale, every layer's output split into its fake and real halves.
    fn discriminate(
        &self,
        seg: &Tensor,
        fake: &Tensor,
        real: &Tensor,
    ) -> (Vec<Vec<Tensor>>, Vec<Vec<Tensor>>) {
        let n = seg.size()[0];
        let fake_concat = Tensor::cat(&[seg, &fake.to_kind(seg.kind())], 1);
        let real_concat = Tensor::cat(&[seg, real], 1);
        let out = self.d.forward_t(&Tensor::cat(&[fake_concat, real_concat], 0), true);
        let half = |start: i64| -> Vec<Vec<Tensor>> {
            out.iter().map(|scale| scale.iter().map(|t| t.narrow(0, start, n)).collect()).collect()
        };
        (half(0), half(n))
    }

    fn check(&self, seg: &Tensor, real: &Tensor) -> Result<(), GanError> {
        let (s, r) = (seg.size(), real.size());
        let c = &self.config;
        if s.len() != 4 || r.len() != 4 || s[0] != r[0] || s[1] != c.label_nc || r[1] != c.image_nc {
            return Err(GanError::Input(format!(
                "label maps [N, {}, H, W] and images [N, {}, H, W] expected, got {s:?} and {r:?}",
                c.label_nc, c.image_nc
            )));
        }
        if r[2] != c.crop_size || r[3] != c.crop_size || s[2..] != r[2..] {
            return Err(GanError::Input(format!(
                "images and label maps must be {0} x {0} (the generator's size), got {s:?} and {r:?}",
                c.crop_size
            )));
        }
        Ok(())
    }

    /// One generator (and encoder) step: hinge, KLD, optional feature matching and perceptual
    /// terms; `eps` is the reparameterisation noise (drawn when `None`).
    pub fn generator_step(
        &mut self,
        seg: &Tensor,
        real: &Tensor,
        eps: Option<&Tensor>,
    ) -> Result<(GeneratorOut, LossTerms), GanError> {
        self.check(seg, real)?;
        let (seg, real) = (&self.layout(seg)?, &self.layout(real)?);
        self.opt_g.zero_grad();
        let (fake, mu, logvar, pf, pr) = crate::device::autocast(self.device, self.precision, || {
            let (z, mu, logvar) = self.encode(real, eps, true);
            let fake = self.g.forward_t(seg, &z, true);
            let (pf, pr) = self.discriminate(seg, &fake, real);
            (fake, mu, logvar, pf, pr)
        })?;
        let fake = fake.to_kind(Kind::Float);
        let last =
            |p: &[Vec<Tensor>]| -> Vec<Tensor> { p.iter().map(|s| s[s.len() - 1].shallow_clone()).collect() };
        let gan = hinge_generator(&last(&pf));
        let kld_term = kld(&mu, &logvar) * self.weights.kld;
        let mut total = &gan + &kld_term;
        let mut terms = vec![("g_gan", gan.detach()), ("g_kld", kld_term.detach())];
        if let Some(w) = self.weights.feat {
            let feat = feature_matching(&pf, &pr) * w;
            total += &feat;
            terms.push(("g_feat", feat.detach()));
        }
        if let Some(p) = &self.perceptual {
            let to_grey = |t: &Tensor| (t + 1.0) * 127.5;
            let perc = p.forward(&to_grey(&fake), &to_grey(real)) * self.weights.perceptual;
            total += &perc;
            terms.push(("g_perceptual", perc.detach()));
        }
        self.backward(&total, false)?;
        self.opt_g.step()?;
        terms.insert(0, ("g_total", total.detach()));
        let pred_fake = last(&pf).iter().map(Tensor::detach).collect();
        Ok((GeneratorOut { fake: fake.detach(), mu: mu.detach(), logvar: logvar.detach(), pred_fake }, terms))
    }

    /// One discriminator step on a fake made without gradient (the generator and encoder in
    /// training mode, as NVlabs makes it: their norm statistics and power iterations advance).
    pub fn discriminator_step(
        &mut self,
        seg: &Tensor,
        real: &Tensor,
        eps: Option<&Tensor>,
    ) -> Result<LossTerms, GanError> {
        self.check(seg, real)?;
        let (seg, real) = (&self.layout(seg)?, &self.layout(real)?);
        self.opt_d.zero_grad();
        let (pf, pr) = crate::device::autocast(self.device, self.precision, || {
            let fake = tch::no_grad(|| {
                let (z, _, _) = self.encode(real, eps, true);
                self.g.forward_t(seg, &z, true).detach()
            });
            self.discriminate(seg, &fake, real)
        })?;
        let last =
            |p: &[Vec<Tensor>]| -> Vec<Tensor> { p.iter().map(|s| s[s.len() - 1].shallow_clone()).collect() };
        let d_fake = hinge_discriminator(&last(&pf), false);
        let d_real = hinge_discriminator(&last(&pr), true);
        self.backward(&(&d_fake + &d_real), true)?;
        self.opt_d.step()?;
        if let Some((dp_g, dp_d)) = &self.dp {
            // Buffers only: the parameters are equal already, and averaging them could round.
            let buffers = |nets: &[&dyn StateDict]| -> Vec<Tensor> {
                nets.iter()
                    .flat_map(|n| n.named_tensors(""))
                    .map(|t| t.tensor)
                    .filter(|t| !t.requires_grad())
                    .collect()
            };
            dp_g.average_buffers(&buffers(&[&self.g, &self.e]))?;
            dp_d.average_buffers(&buffers(&[&self.d]))?;
        }
        Ok(vec![("d_fake", d_fake.detach()), ("d_real", d_real.detach())])
    }

    /// Images in -1..1 for label maps `seg`: codes from `real` images through the encoder
    /// (its mean when `eps` is zero), or drawn from the prior when `real` is `None`. Evaluation
    /// mode, no gradient.
    pub fn generate(
        &self,
        seg: &Tensor,
        real: Option<&Tensor>,
        eps: Option<&Tensor>,
    ) -> Result<Tensor, GanError> {
        let n = seg.size()[0];
        let out = tch::no_grad(|| {
            crate::device::autocast(self.device, self.precision, || {
                let z = match real {
                    Some(r) => self.encode(r, eps, false).0,
                    None => match eps {
                        Some(e) => e.to_device(self.device),
                        None => Tensor::randn([n, self.config.z_dim], (Kind::Float, self.device)),
                    },
                };
                self.g.forward_t(seg, &z, false)
            })
        })?;
        Ok(out.to_kind(Kind::Float))
    }

    /// Sets the learning rates (the linear decay's).
    pub fn set_lrs(&mut self, lr_g: f64, lr_d: f64) {
        self.opt_g.set_lr(lr_g);
        self.opt_d.set_lr(lr_d);
    }
}
