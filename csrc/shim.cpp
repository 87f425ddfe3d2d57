// What tch 0.24 does not expose: autocast for a given device type and dtype (tch's `autocast`
// is CUDA-only and always fp16), and the channels_last memory format.
// Every function catches C++ exceptions and returns them as a malloc'd message (NULL on success).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <vector>
#include <mutex>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "guard.h"

namespace {
at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
}  // namespace

extern "C" {

void chess_free_error(char *err) { std::free(err); }

// Enables autocast on `cuda ? CUDA : CPU` with `scalar_type` (c10::ScalarType code); stores the
// previous state so that `chess_autocast_exit` can restore it.
char *chess_autocast_enter(int cuda, int scalar_type, int *prev_enabled, int *prev_type) {
  GUARD({
    auto dev = device_type(cuda);
    *prev_enabled = at::autocast::is_autocast_enabled(dev) ? 1 : 0;
    *prev_type = static_cast<int>(at::autocast::get_autocast_dtype(dev));
    at::autocast::set_autocast_dtype(dev, static_cast<at::ScalarType>(scalar_type));
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::increment_nesting();
  })
}

char *chess_autocast_exit(int cuda, int prev_enabled, int prev_type) {
  GUARD({
    auto dev = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(dev, prev_enabled != 0);
    at::autocast::set_autocast_dtype(dev, static_cast<at::ScalarType>(prev_type));
  })
}

// In place, as `module.to(memory_format=torch.channels_last)` does for each 4-d parameter:
// every handle sharing the tensor sees the new layout.
char *chess_set_channels_last_(at::Tensor *t) {
  GUARD({
    if (t->dim() == 4)
      t->set_data(t->to(t->options(), false, false, at::MemoryFormat::ChannelsLast));
  })
}

// `t.to(memory_format=torch.channels_last)`: unlike `contiguous`, this also restrides tensors
// whose layout is ambiguous (one channel, 1x1 maps), so conv kernels pick the NHWC path.
char *chess_channels_last(const at::Tensor *t, at::Tensor **out) {
  GUARD({ *out = new at::Tensor(t->to(t->options(), false, false, at::MemoryFormat::ChannelsLast)); })
}

// `n` standard normal values from a private generator of `like`'s device seeded with `seed`: the
// same values for the same seed on that device, without touching the global generator, and
// drawn by the device's own kernel (host-side Box-Muller cost ~9 ms per 512 x 512 image).
char *chess_seeded_randn(int64_t n, uint64_t seed, const at::Tensor *like, at::Tensor **out) {
  GUARD({
    auto dev = like->device();
    at::Generator gen = at::globalContext().defaultGenerator(dev).clone();
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_current_seed(seed);
    }
    *out = new at::Tensor(at::randn({n}, gen, like->options().dtype(at::kFloat)));
  })
}

// `F.leaky_relu(x, slope)`: one kernel (and one in backward), where composing it from tch's
// ops takes three; tch's own `leaky_relu` fixes the slope at 0.01.
char *chess_leaky_relu(const at::Tensor *x, double slope, at::Tensor **out) {
  GUARD({ *out = new at::Tensor(at::leaky_relu(*x, slope)); })
}

// A CPU float tensor over caller-owned memory: `release(ctx, data)` runs when libtorch frees
// the storage (on whichever thread drops the last reference), so the caller can recycle the
// buffer instead of libtorch allocating, page-faulting and unmapping 30 MB per batch.
char *chess_from_host_buffer(float *data, const int64_t *sizes, int ndim, void *ctx,
                             void (*release)(void *, void *), at::Tensor **out) {
  GUARD({
    auto t = at::from_blob(
        data, at::IntArrayRef(sizes, ndim), [ctx, release](void *p) { release(ctx, p); },
        at::TensorOptions().dtype(at::kFloat).device(at::kCPU));
    *out = new at::Tensor(std::move(t));
  })
}

// Reproducible CUDA maths for comparisons: no cudnn autotuning, deterministic cudnn kernels,
// no TF32 in convolutions or matrix products (`exact` = 0 restores the training defaults).
char *chess_set_exact_cuda_math(int exact) {
  GUARD({
    auto &ctx = at::globalContext();
    ctx.setBenchmarkCuDNN(!exact);
    ctx.setDeterministicCuDNN(exact != 0);
    ctx.setAllowTF32CuDNN(!exact);
    ctx.setAllowTF32CuBLAS(false);
  })
}

// Whether the current CUDA device computes bf16 natively (compute capability 8.0+), through
// ATen's CUDA hooks, which need no CUDA headers here; false without a CUDA build or device.
char *chess_cuda_bf16_native(int *out) {
  GUARD({
    auto &hooks = at::detail::getCUDAHooks();
    *out = (hooks.hasCUDA() && hooks.supportsBFloat16ConvolutionWithCuDNNv8()) ? 1 : 0;
  })
}

// A page-locked copy of a CPU tensor (tch's `pin_memory` passes the deprecated device argument).
char *chess_pin_memory(const at::Tensor *t, at::Tensor **out) {
  GUARD({ *out = new at::Tensor(t->pin_memory()); })
}

char *chess_is_channels_last(const at::Tensor *t, int *out) {
  GUARD({ *out = t->is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0; })
}

// One step of torch.optim.SGD (no dampening, no Nesterov), with PyTorch's exact arithmetic so
// that runs match the Python original bit for bit where the kernels allow: the per-tensor loop
// torch uses for CPU tensors, or its multi-tensor (`_foreach_`) path when `foreach` is set (what
// torch uses for CUDA tensors). `bufs[i]` is NULL until parameter i first has a gradient; new
// buffers are allocated here and owned by the caller afterwards.
char *chess_sgd_step(at::Tensor **params, at::Tensor **bufs, int n, double lr, double momentum,
                     double weight_decay, int foreach) {
  GUARD({
    at::NoGradGuard no_grad;
    std::vector<int> idx;
    std::vector<at::Tensor> ps, gs;
    for (int i = 0; i < n; ++i) {
      at::Tensor g = params[i]->grad();
      if (!g.defined()) continue;
      idx.push_back(i);
      ps.push_back(*params[i]);
      gs.push_back(g);
    }
    if (idx.empty()) return nullptr;
    if (!foreach) {
      for (size_t j = 0; j < idx.size(); ++j) {
        at::Tensor d = gs[j];
        if (weight_decay != 0) d = d.add(ps[j], weight_decay);
        if (momentum != 0) {
          at::Tensor *&buf = bufs[idx[j]];
          if (buf == nullptr) {
            buf = new at::Tensor(at::clone(d).detach());
          } else {
            buf->mul_(momentum).add_(d, 1.0);
          }
          d = *buf;
        }
        ps[j].add_(d, -lr);
      }
      return nullptr;
    }
    if (weight_decay != 0) gs = at::_foreach_add(gs, ps, weight_decay);
    if (momentum != 0) {
      bool all_exist = true;
      for (int i : idx) all_exist = all_exist && bufs[i] != nullptr;
      std::vector<at::Tensor> bs;
      if (all_exist) {
        for (int i : idx) bs.push_back(*bufs[i]);
        at::_foreach_mul_(bs, momentum);
        at::_foreach_add_(bs, gs, 1.0);
      } else {
        for (size_t j = 0; j < idx.size(); ++j) {
          at::Tensor *&buf = bufs[idx[j]];
          if (buf == nullptr) {
            buf = new at::Tensor(at::clone(gs[j]).detach());
          } else {
            buf->mul_(momentum).add_(gs[j], 1.0);
          }
          bs.push_back(*buf);
        }
      }
      gs = bs;
    }
    at::_foreach_add_(ps, gs, -lr);
  })
}

// MoCo's key update `k = k * m + q * (1 - m)` for all parameters, in three multi-tensor kernels
// with the same rounding as the per-tensor expression.
char *chess_momentum_update(at::Tensor **keys, at::Tensor **queries, int n, double m) {
  GUARD({
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> ks, qs;
    for (int i = 0; i < n; ++i) {
      ks.push_back(*keys[i]);
      qs.push_back(*queries[i]);
    }
    auto updated = at::_foreach_mul(ks, m);
    at::_foreach_add_(updated, at::_foreach_mul(qs, 1.0 - m));
    at::_foreach_copy_(ks, updated);
  })
}

// One step of torch.optim.Adam / AdamW over parameters that all have gradients and state, with
// the ops and scalars of torch's single-tensor path (`_single_tensor_adam` in torch/optim/adam.py,
// capturable, differentiable and maximize off), so that results equal PyTorch's CPU default bit for
// bit. tch wraps `addcmul_`, `addcdiv_` and `add` without their scale argument, hence C++.
// `max_exp_avg_sqs` is read only when `amsgrad` is set; `steps` are float32 CPU scalars.
char *chess_adam_step(at::Tensor **params, at::Tensor **grads, at::Tensor **exp_avgs,
                      at::Tensor **exp_avg_sqs, at::Tensor **max_exp_avg_sqs, at::Tensor **steps,
                      int n, double lr, double beta1, double beta2, double eps, double weight_decay,
                      int amsgrad, int decoupled_weight_decay) {
  GUARD({
    at::NoGradGuard no_grad;
    for (int i = 0; i < n; ++i) {
      at::Tensor param = *params[i];
      at::Tensor grad = *grads[i];
      at::Tensor exp_avg = *exp_avgs[i];
      at::Tensor exp_avg_sq = *exp_avg_sqs[i];
      steps[i]->add_(1);
      if (weight_decay != 0) {
        if (decoupled_weight_decay) {
          param.mul_(1 - lr * weight_decay);
        } else {
          grad = grad.add(param, weight_decay);
        }
      }
      exp_avg.lerp_(grad, 1 - beta1);
      exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
      // Python: `step = step_t.item()` (a float32 value as a Python float), then float pow.
      double step = steps[i]->item<double>();
      double bias_correction1 = 1 - std::pow(beta1, step);
      double bias_correction2 = 1 - std::pow(beta2, step);
      double step_size = lr / bias_correction1;
      double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);
      at::Tensor denom;
      if (amsgrad) {
        at::Tensor max_exp_avg_sq = *max_exp_avg_sqs[i];
        at::maximum_out(max_exp_avg_sq, max_exp_avg_sq, exp_avg_sq);
        denom = (max_exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps);
      } else {
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps);
      }
      param.addcdiv_(exp_avg, denom, -step_size);
    }
  })
}
}
