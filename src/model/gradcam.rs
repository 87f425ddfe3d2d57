//! What a classifier looks at: Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from
//! Deep Networks via Gradient-based Localization", ICCV 2017) on the last stage of the trunk,
//! and the probabilities the maps explain.
use tch::{Kind, Tensor};

use super::encoder::Encoder;

/// Grad-CAM maps `[N, H, W]` (float32, in 0..1, on the input's device) of `input`
/// (`[N, C, H, W]`, already normalised) for one target logit per image, `class[i]` for image i.
///
/// With A = the output of `layer4` (`[N, K, h, w]`, eval mode: BatchNorm uses its running
/// statistics and nothing of the encoder changes) and y_c the target logit:
/// `w_k = mean_ij dy_c/dA_k(i, j)`, `cam = relu(sum_k w_k A_k)`, bilinearly upsampled to
/// `H x W` (half-pixel centres, `align_corners=False`) and divided by its per-image maximum
/// (an all-zero map stays 0).
///
/// The gradient is taken with respect to A alone (`Tensor::run_backward` on a detached copy of
/// A), so no parameter's `.grad` is touched and it works whatever the grad mode of the caller
/// and whether or not the parameters require gradients; the trunk runs without a graph.
///
/// Panics when `class` does not hold one index per image, or an index is not a logit of the head.
pub fn grad_cam(encoder: &Encoder, input: &Tensor, class: &[i64]) -> Tensor {
    let dims = input.size();
    assert_eq!(dims.len(), 4, "grad_cam: input must be [N, C, H, W], got {dims:?}");
    let (n, h, w) = (dims[0], dims[2], dims[3]);
    assert_eq!(class.len() as i64, n, "grad_cam: {} target class(es) for {n} image(s)", class.len());
    // layer4's output, computed without a graph; a leaf that requires grad from here on.
    let activations = tch::no_grad(|| {
        let stages = encoder.trunk().forward_stages(input, false);
        stages.last().expect("the trunk has stages").shallow_clone()
    });
    let activations = activations.detach().set_requires_grad(true);
    let weights = tch::with_grad(|| {
        let features = activations.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let logits = encoder.head_forward(&features);
        let outputs = logits.size()[1];
        if let Some(bad) = class.iter().find(|&&c| c < 0 || c >= outputs) {
            panic!("grad_cam: class {bad} is not one of the head's {outputs} logits");
        }
        let index = Tensor::from_slice(class).to_device(logits.device()).unsqueeze(1);
        // Images are independent in eval mode: the gradient of the sum is each image's own.
        let target = logits.gather(1, &index, false).sum(Kind::Float);
        let grads = Tensor::run_backward(&[target], &[&activations], false, false);
        grads[0].mean_dim([2i64, 3].as_slice(), true, grads[0].kind())
    });
    tch::no_grad(|| {
        let cam = (&weights * activations.detach()).sum_dim_intlist(1, true, Kind::Float).relu();
        let cam = cam.upsample_bilinear2d([h, w], false, None, None).squeeze_dim(1);
        let max = cam.amax([1i64, 2].as_slice(), true);
        let ones = max.ones_like();
        cam / max.where_self(&max.gt(0.0), &ones)
    })
}

/// Class probabilities `[N, n_labels]` of `input` in eval mode without a graph: the sigmoid of
/// each logit for multi-label tasks, the softmax over the logits otherwise.
pub fn predict_probabilities(encoder: &Encoder, input: &Tensor, multi_label: bool) -> Tensor {
    tch::no_grad(|| {
        let logits = encoder.forward_t(input, false);
        if multi_label { logits.sigmoid() } else { logits.softmax(-1, Kind::Float) }
    })
}
