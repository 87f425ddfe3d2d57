//! `F.interpolate` in its nearest and bilinear modes (also `nn.Upsample`, which calls it).
use tch::Tensor;

/// The target of an upsampling: a scale factor per spatial dimension, or an output size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resize {
    /// `scale_factor=(h, w)`: output `floor(in * scale)`, and the kernels are given the scale
    /// itself (`recompute_scale_factor=None`), which decides the sampled positions when
    /// `in * scale` is not whole.
    Scale([f64; 2]),
    /// `size=(h, w)`.
    Size([i64; 2]),
}

impl Resize {
    /// The same `scale_factor` for height and width.
    pub fn scale(factor: f64) -> Self {
        Self::Scale([factor, factor])
    }

    /// `(output size, the scales given to the kernel)` for an NCHW input.
    fn resolve(self, xs: &Tensor) -> ([i64; 2], [Option<f64>; 2]) {
        match self {
            Self::Size(size) => (size, [None, None]),
            Self::Scale([sh, sw]) => {
                let (h, w) = (xs.size()[2], xs.size()[3]);
                let out = [(h as f64 * sh).floor() as i64, (w as f64 * sw).floor() as i64];
                (out, [Some(sh), Some(sw)])
            }
        }
    }
}

/// `F.interpolate(xs, mode="nearest")` on an NCHW tensor (`nn.Upsample(mode="nearest")`).
pub fn upsample_nearest(xs: &Tensor, to: Resize) -> Tensor {
    let (size, [sh, sw]) = to.resolve(xs);
    xs.upsample_nearest2d(size, sh, sw)
}

/// `F.interpolate(xs, mode="bilinear", align_corners)` on an NCHW tensor.
pub fn upsample_bilinear(xs: &Tensor, to: Resize, align_corners: bool) -> Tensor {
    let (size, [sh, sw]) = to.resolve(xs);
    xs.upsample_bilinear2d(size, align_corners, sh, sw)
}
