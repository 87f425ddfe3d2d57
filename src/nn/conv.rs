//! `nn.Conv2d` and `nn.ConvTranspose2d`, with PyTorch's parameter names, layouts and init.
use tch::Tensor;
use tch::nn::{Init, Path};

use super::{NamedTensor, NnError, StateDict, TensorRole, push};

/// How a convolution fills its border (`padding_mode` of `nn.Conv2d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingMode {
    #[default]
    Zeros,
    Reflect,
    Replicate,
    Circular,
}

impl PaddingMode {
    /// The `F.pad` mode; `None` for zeros, which the convolution pads itself.
    fn pad_mode(self) -> Option<&'static str> {
        match self {
            Self::Zeros => None,
            Self::Reflect => Some("reflect"),
            Self::Replicate => Some("replicate"),
            Self::Circular => Some("circular"),
        }
    }
}

/// How a weighted layer's weight (and bias, when it has one) is first drawn.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum WeightInit {
    /// `reset_parameters()` of `torch.nn`: weight `kaiming_uniform_(a=sqrt(5))`, bias uniform in
    /// +-1/sqrt(fan_in). Draws equal PyTorch's under the same seed.
    #[default]
    PyTorch,
    /// torchvision's ResNet: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, zero bias.
    KaimingNormalFanOut,
    /// `xavier_normal_(gain)`, zero bias (SPADE's and pix2pixHD's `init_type="xavier"`).
    XavierNormal { gain: f64 },
    /// `normal_(0, std)`, zero bias (SPADE's `init_type="normal"`).
    Normal { std: f64 },
}

/// `(fan_in, fan_out)` of a weight as `torch.nn.init._calculate_fan_in_and_fan_out` reads it:
/// dims 1 and 0 times the kernel area, whatever the layer means by them.
fn fans(shape: &[i64]) -> (f64, f64) {
    let receptive: i64 = shape[2..].iter().product();
    ((shape[1] * receptive) as f64, (shape[0] * receptive) as f64)
}

/// Creates `weight` (and `bias` of `bias_len`) in PyTorch's order with the chosen init.
pub(crate) fn weight_and_bias(
    p: &Path,
    shape: &[i64],
    bias_len: Option<i64>,
    init: WeightInit,
) -> (Tensor, Option<Tensor>) {
    let (fan_in, fan_out) = fans(shape);
    let weight_init = match init {
        WeightInit::PyTorch => {
            // The arithmetic of kaiming_uniform_ (gain, std, bound), so the bound is PyTorch's bit
            // for bit.
            let a = 5f64.sqrt();
            let gain = (2.0 / (1.0 + a * a)).sqrt();
            let bound = 3f64.sqrt() * (gain / fan_in.sqrt());
            Init::Uniform { lo: -bound, up: bound }
        }
        WeightInit::KaimingNormalFanOut => Init::Randn { mean: 0.0, stdev: (2.0 / fan_out).sqrt() },
        WeightInit::XavierNormal { gain } => {
            Init::Randn { mean: 0.0, stdev: gain * (2.0 / (fan_in + fan_out)).sqrt() }
        }
        WeightInit::Normal { std } => Init::Randn { mean: 0.0, stdev: std },
    };
    let weight = p.var("weight", shape, weight_init);
    let bias = bias_len.map(|n| {
        let bias_init = match init {
            WeightInit::PyTorch if fan_in > 0.0 => {
                let bound = 1.0 / fan_in.sqrt();
                Init::Uniform { lo: -bound, up: bound }
            }
            _ => Init::Const(0.0),
        };
        p.var("bias", &[n], bias_init)
    });
    (weight, bias)
}

fn check_groups(layer: &'static str, c_in: i64, c_out: i64, groups: i64) -> Result<(), NnError> {
    if c_in <= 0 || c_out <= 0 {
        return Err(NnError::config(layer, format!("channels must be positive, got {c_in} -> {c_out}")));
    }
    if groups <= 0 || c_in % groups != 0 || c_out % groups != 0 {
        return Err(NnError::config(
            layer,
            format!("groups {groups} must divide both in_channels {c_in} and out_channels {c_out}"),
        ));
    }
    Ok(())
}

fn check_positive(layer: &'static str, what: &str, v: [i64; 2]) -> Result<(), NnError> {
    if v.iter().any(|&x| x <= 0) {
        return Err(NnError::config(layer, format!("{what} must be positive, got {v:?}")));
    }
    Ok(())
}

/// The options of `nn.Conv2d` beyond its channel counts; `Conv2dConfig::new(k)` is PyTorch's
/// defaults for a `k`x`k` kernel. Pairs are `(height, width)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv2dConfig {
    pub kernel: [i64; 2],
    pub stride: [i64; 2],
    pub padding: [i64; 2],
    pub dilation: [i64; 2],
    pub groups: i64,
    pub bias: bool,
    pub padding_mode: PaddingMode,
    pub init: WeightInit,
}

impl Conv2dConfig {
    /// A square kernel, stride 1, no padding, bias, PyTorch's init.
    pub fn new(kernel: i64) -> Self {
        Self {
            kernel: [kernel, kernel],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: true,
            padding_mode: PaddingMode::Zeros,
            init: WeightInit::PyTorch,
        }
    }
}

/// `nn.Conv2d`: `weight` `[out, in/groups, kh, kw]` and an optional `bias` `[out]`.
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    stride: [i64; 2],
    padding: [i64; 2],
    dilation: [i64; 2],
    groups: i64,
    padding_mode: PaddingMode,
}

impl Conv2d {
    /// torchvision ResNet's convolution: square kernel, no bias, Kaiming-normal (fan_out, ReLU).
    pub fn new(p: Path, c_in: i64, c_out: i64, kernel: i64, stride: i64, padding: i64) -> Self {
        let shape = [c_out, c_in, kernel, kernel];
        let (weight, bias) = weight_and_bias(&p, &shape, None, WeightInit::KaimingNormalFanOut);
        Self {
            weight,
            bias,
            stride: [stride, stride],
            padding: [padding, padding],
            dilation: [1, 1],
            groups: 1,
            padding_mode: PaddingMode::Zeros,
        }
    }

    /// `nn.Conv2d(c_in, c_out, ...)` with every option of `config`.
    pub fn with_config(p: Path, c_in: i64, c_out: i64, config: Conv2dConfig) -> Result<Self, NnError> {
        const LAYER: &str = "Conv2d";
        check_groups(LAYER, c_in, c_out, config.groups)?;
        check_positive(LAYER, "kernel", config.kernel)?;
        check_positive(LAYER, "stride", config.stride)?;
        check_positive(LAYER, "dilation", config.dilation)?;
        if config.padding.iter().any(|&x| x < 0) {
            return Err(NnError::config(LAYER, format!("padding must be >= 0, got {:?}", config.padding)));
        }
        let [kh, kw] = config.kernel;
        let shape = [c_out, c_in / config.groups, kh, kw];
        let (weight, bias) = weight_and_bias(&p, &shape, config.bias.then_some(c_out), config.init);
        Ok(Self {
            weight,
            bias,
            stride: config.stride,
            padding: config.padding,
            dilation: config.dilation,
            groups: config.groups,
            padding_mode: config.padding_mode,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        self.forward_with_weight(xs, &self.weight)
    }

    /// The convolution with `weight` in place of the layer's own (spectral norm's hook).
    pub(crate) fn forward_with_weight(&self, xs: &Tensor, weight: &Tensor) -> Tensor {
        match self.padding_mode.pad_mode() {
            // `_conv_forward` of PyTorch: pad (left, right, top, bottom), then convolve unpadded.
            Some(mode) if self.padding != [0, 0] => {
                let [ph, pw] = self.padding;
                let padded = xs.pad([pw, pw, ph, ph], mode, None);
                padded.conv2d(weight, self.bias.as_ref(), self.stride, [0, 0], self.dilation, self.groups)
            }
            _ => xs.conv2d(weight, self.bias.as_ref(), self.stride, self.padding, self.dilation, self.groups),
        }
    }
}

impl StateDict for Conv2d {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        push(out, prefix, "weight", &self.weight, TensorRole::Parameter);
        if let Some(bias) = &self.bias {
            push(out, prefix, "bias", bias, TensorRole::Parameter);
        }
    }
}

/// The options of `nn.ConvTranspose2d` beyond its channel counts; `new(k)` is PyTorch's
/// defaults for a `k`x`k` kernel. Pairs are `(height, width)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvTranspose2dConfig {
    pub kernel: [i64; 2],
    pub stride: [i64; 2],
    pub padding: [i64; 2],
    pub output_padding: [i64; 2],
    pub groups: i64,
    pub dilation: [i64; 2],
    pub bias: bool,
    pub init: WeightInit,
}

impl ConvTranspose2dConfig {
    /// A square kernel, stride 1, no padding, bias, PyTorch's init.
    pub fn new(kernel: i64) -> Self {
        Self {
            kernel: [kernel, kernel],
            stride: [1, 1],
            padding: [0, 0],
            output_padding: [0, 0],
            groups: 1,
            dilation: [1, 1],
            bias: true,
            init: WeightInit::PyTorch,
        }
    }
}

/// `nn.ConvTranspose2d`: `weight` `[in, out/groups, kh, kw]` (PyTorch's layout, transposed from
/// a convolution's) and an optional `bias` `[out]`.
#[derive(Debug)]
pub struct ConvTranspose2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    stride: [i64; 2],
    padding: [i64; 2],
    output_padding: [i64; 2],
    groups: i64,
    dilation: [i64; 2],
}

impl ConvTranspose2d {
    /// `nn.ConvTranspose2d(c_in, c_out, ...)` with every option of `config`.
    pub fn new(p: Path, c_in: i64, c_out: i64, config: ConvTranspose2dConfig) -> Result<Self, NnError> {
        const LAYER: &str = "ConvTranspose2d";
        check_groups(LAYER, c_in, c_out, config.groups)?;
        check_positive(LAYER, "kernel", config.kernel)?;
        check_positive(LAYER, "stride", config.stride)?;
        check_positive(LAYER, "dilation", config.dilation)?;
        if config.padding.iter().any(|&x| x < 0) {
            return Err(NnError::config(LAYER, format!("padding must be >= 0, got {:?}", config.padding)));
        }
        for i in 0..2 {
            let op = config.output_padding[i];
            if op < 0 || (op >= config.stride[i] && op >= config.dilation[i]) {
                return Err(NnError::config(
                    LAYER,
                    format!(
                        "output_padding {:?} must be smaller than either stride {:?} or dilation {:?}",
                        config.output_padding, config.stride, config.dilation
                    ),
                ));
            }
        }
        let [kh, kw] = config.kernel;
        let shape = [c_in, c_out / config.groups, kh, kw];
        let (weight, bias) = weight_and_bias(&p, &shape, config.bias.then_some(c_out), config.init);
        Ok(Self {
            weight,
            bias,
            stride: config.stride,
            padding: config.padding,
            output_padding: config.output_padding,
            groups: config.groups,
            dilation: config.dilation,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        self.forward_with_weight(xs, &self.weight)
    }

    pub(crate) fn forward_with_weight(&self, xs: &Tensor, weight: &Tensor) -> Tensor {
        xs.conv_transpose2d(
            weight,
            self.bias.as_ref(),
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )
    }
}

impl StateDict for ConvTranspose2d {
    fn push_tensors(&self, prefix: &str, out: &mut Vec<NamedTensor>) {
        push(out, prefix, "weight", &self.weight, TensorRole::Parameter);
        if let Some(bias) = &self.bias {
            push(out, prefix, "bias", bias, TensorRole::Parameter);
        }
    }
}
