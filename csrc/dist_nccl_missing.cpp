// Stands in for csrc/dist_nccl.cpp where the CUDA/NCCL headers were not found at build time.
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <stdexcept>

c10::intrusive_ptr<c10d::Backend> chess_nccl_group(const c10::intrusive_ptr<c10d::Store> &, int, int,
                                                   std::chrono::milliseconds, int) {
  throw std::runtime_error(
      "this build has no NCCL: rebuild where the nvidia-nccl, nvidia-cuda-crt and nvidia-cuda-cccl wheels "
      "are installed (make venv), or use --backend gloo");
}
