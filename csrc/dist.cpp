// libtorch's own distributed engine (c10d) for data-parallel training: a TCPStore rendezvous and a
// Gloo (CPU tensors) or NCCL (CUDA tensors) process group, as torch.distributed builds them.
// tch wraps none of it. Every function catches C++ exceptions and returns them as a malloc'd
// message (NULL on success).
#define USE_C10D_GLOO
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <chrono>
#include <exception>
#include <mutex>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

// csrc/dist_nccl.cpp: the NCCL group, compiled where the CUDA and NCCL headers are installed.
c10::intrusive_ptr<c10d::Backend> chess_nccl_group(const c10::intrusive_ptr<c10d::Store> &store, int rank,
                                                   int world, std::chrono::milliseconds timeout, int device);

#include "guard.h"

namespace {
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  int world;
};

std::vector<at::Tensor> tensors_of(at::Tensor **ts, int n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.push_back(*ts[i]);
  return out;
}

// Launches one collective per tensor, so that Gloo's worker threads (or NCCL's stream) carry
// several at once, then waits for all of them.
template <typename Launch>
void run_each(Group *g, at::Tensor **ts, int n, Launch launch) {
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  works.reserve(n);
  for (int i = 0; i < n; ++i) {
    std::vector<at::Tensor> one{*ts[i]};
    works.push_back(launch(one));
  }
  for (auto &w : works) w->wait(g->timeout);
}
}  // namespace

namespace {
// Averages gradients over the ranks while the backward pass still runs, as DDP's reducer:
// parameters are grouped into buckets in reverse order (the order backward produces their
// gradients); a hook after each gradient's accumulation counts down its bucket, and a bucket
// whose gradients are all in is all-reduced at once, asynchronously. Buckets are launched in
// order, so every rank issues the same sequence of collectives. `finish` waits for all of
// them, divides by the world size and writes packed buckets back into the gradients.
struct Reducer {
  Group *group;
  std::vector<at::Tensor> params;
  std::vector<std::vector<int>> buckets;
  std::vector<int> bucket_of;
  std::vector<int> pending;
  std::vector<at::Tensor> reduced;  // per bucket: the tensor in flight
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  size_t next_launch = 0;
  size_t launched_in_backward = 0;  // of the last step: buckets the hooks started
  bool armed = false;
  std::exception_ptr error;
  std::mutex mu;

  bool packed(size_t b) const {
    if (buckets[b].size() != 1) return true;
    const at::Tensor &g = params[buckets[b][0]].grad();
    return !g.defined() || !g.is_contiguous();
  }

  void launch(size_t b) {
    std::vector<at::Tensor> one;
    if (packed(b)) {
      std::vector<at::Tensor> parts;
      for (int i : buckets[b]) {
        const at::Tensor &g = params[i].grad();
        parts.push_back(g.defined() ? g.reshape({-1}) : at::zeros({params[i].numel()}, params[i].options()));
      }
      reduced[b] = at::cat(parts);
    } else {
      reduced[b] = params[buckets[b][0]].grad();
    }
    one.push_back(reduced[b]);
    works[b] = group->backend->allreduce(one, c10d::AllreduceOptions{});
  }

  void launch_ready() {
    while (next_launch < buckets.size() && pending[next_launch] == 0) launch(next_launch++);
  }

  void ready(int idx) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || error) return;
    try {
      --pending[bucket_of[idx]];
      launch_ready();
    } catch (...) {
      error = std::current_exception();
    }
  }

  void arm() {
    std::lock_guard<std::mutex> lock(mu);
    for (size_t b = 0; b < buckets.size(); ++b) {
      pending[b] = static_cast<int>(buckets[b].size());
      works[b].reset();
      reduced[b] = at::Tensor();
    }
    next_launch = 0;
    error = nullptr;
    armed = true;
  }

  void finish() {
    std::lock_guard<std::mutex> lock(mu);
    armed = false;
    if (error) std::rethrow_exception(error);
    launched_in_backward = next_launch;
    // Parameters that got no gradient leave their bucket pending: reduce it now (zeros for them).
    while (next_launch < buckets.size()) launch(next_launch++);
    for (auto &w : works) w->wait(group->timeout);
    at::NoGradGuard no_grad;
    for (size_t b = 0; b < buckets.size(); ++b) {
      reduced[b].div_(group->world);
      if (!packed(b)) continue;
      int64_t offset = 0;
      for (int i : buckets[b]) {
        at::Tensor g = params[i].grad();
        int64_t n = params[i].numel();
        if (g.defined()) g.copy_(reduced[b].narrow(0, offset, n).view(g.sizes()));
        offset += n;
      }
      reduced[b] = at::Tensor();
    }
  }
};

struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  Reducer *reducer;
  int index;
  ReadyHook(Reducer *r, int i) : reducer(r), index(i) {}
  void operator()(const torch::autograd::Variable &) override { reducer->ready(index); }
};
}  // namespace

extern "C" {

// Joins the group: `backend` is "gloo" or "nccl". `is_server`: this process serves the TCPStore
// (rank 0 when no torchrun agent serves it). `prefix` keeps the keys of one rendezvous apart
// from others on the same store (torchrun's agent store outlives restarts).
char *chess_dist_new(const char *backend, const char *host, int port, int is_server, const char *prefix,
                     int rank, int world, int64_t timeout_ms, int device, void **out) {
  GUARD({
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = world;
    opts.waitWorkers = false;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    auto g = new Group{store, {}, timeout, world};
    try {
      std::string name(backend);
      if (name == "gloo") {
        // create_default reads GLOO_SOCKET_IFNAME / GLOO_DEVICE_TRANSPORT like torch.distributed.
        auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
        g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
      } else if (name == "nccl") {
        g->backend = chess_nccl_group(store, rank, world, timeout, device);
      } else {
        throw std::runtime_error("unknown backend '" + name + "' (gloo or nccl)");
      }
    } catch (...) {
      delete g;
      throw;
    }
    *out = g;
  })
}

void chess_dist_free(void *group) {
  auto g = static_cast<Group *>(group);
  try {
    if (g->backend) g->backend->shutdown();
  } catch (...) {
  }
  delete g;
}

// Sums each tensor over the ranks in place; with `average`, divides by the world size.
char *chess_dist_all_reduce(void *group, at::Tensor **ts, int n, int average) {
  GUARD({
    auto g = static_cast<Group *>(group);
    run_each(g, ts, n, [&](std::vector<at::Tensor> &one) {
      return g->backend->allreduce(one, c10d::AllreduceOptions{});
    });
    if (average)
      for (int i = 0; i < n; ++i) ts[i]->div_(g->world);
  })
}

// `out` ([world * N, ...]) receives every rank's `in` ([N, ...]) in rank order.
char *chess_dist_all_gather(void *group, at::Tensor *out, at::Tensor *in) {
  GUARD({
    auto g = static_cast<Group *>(group);
    auto work = g->backend->_allgather_base(*out, *in, c10d::AllgatherOptions{});
    work->wait(g->timeout);
  })
}

// Rank `root`'s values of each tensor, in place on every rank.
char *chess_dist_broadcast(void *group, at::Tensor **ts, int n, int root) {
  GUARD({
    auto g = static_cast<Group *>(group);
    run_each(g, ts, n, [&](std::vector<at::Tensor> &one) {
      c10d::BroadcastOptions opts;
      opts.rootRank = root;
      return g->backend->broadcast(one, opts);
    });
  })
}

char *chess_dist_barrier(void *group) {
  GUARD({
    auto g = static_cast<Group *>(group);
    g->backend->barrier(c10d::BarrierOptions{})->wait(g->timeout);
  })
}

// A reducer of the gradients of `params` (leaf tensors that require grad) in `group`.
char *chess_reducer_new(void *group, at::Tensor **params, int n, int64_t bucket_bytes, void **out) {
  GUARD({
    auto r = new Reducer();
    r->group = static_cast<Group *>(group);
    for (int i = 0; i < n; ++i) r->params.push_back(*params[i]);
    r->bucket_of.assign(n, 0);
    int64_t bytes = 0;
    for (int i = n - 1; i >= 0; --i) {
      const at::Tensor &p = r->params[i];
      int64_t size = p.numel() * static_cast<int64_t>(p.element_size());
      bool fits = !r->buckets.empty() && bytes + size <= bucket_bytes &&
                  r->params[r->buckets.back()[0]].scalar_type() == p.scalar_type() &&
                  r->params[r->buckets.back()[0]].device() == p.device();
      if (!fits) {
        r->buckets.emplace_back();
        bytes = 0;
      }
      r->buckets.back().push_back(i);
      r->bucket_of[i] = static_cast<int>(r->buckets.size()) - 1;
      bytes += size;
    }
    r->pending.assign(r->buckets.size(), 0);
    r->reduced.resize(r->buckets.size());
    r->works.resize(r->buckets.size());
    for (int i = 0; i < n; ++i)
      torch::autograd::impl::set_post_acc_grad_hooks(r->params[i], std::make_unique<ReadyHook>(r, i));
    *out = r;
  })
}

// Before a backward pass whose gradients are to be averaged.
char *chess_reducer_arm(void *reducer) { GUARD(static_cast<Reducer *>(reducer)->arm()) }

// After it: waits for every bucket and writes the averages into the gradients.
char *chess_reducer_finish(void *reducer) { GUARD(static_cast<Reducer *>(reducer)->finish()) }

int chess_reducer_buckets(void *reducer) {
  return static_cast<int>(static_cast<Reducer *>(reducer)->buckets.size());
}

int chess_reducer_launched_in_backward(void *reducer) {
  return static_cast<int>(static_cast<Reducer *>(reducer)->launched_in_backward);
}

void chess_reducer_free(void *reducer) {
  auto r = static_cast<Reducer *>(reducer);
  try {
    for (auto &p : r->params) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
  } catch (...) {
  }
  delete r;
}

}  // extern "C"
