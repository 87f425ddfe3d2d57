// The NCCL process group of csrc/dist.cpp, in its own unit: ProcessGroupNCCL.hpp needs the CUDA
// and NCCL headers of the nvidia-* wheels, which build.rs finds (else dist_nccl_missing.cpp).
#define USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

c10::intrusive_ptr<c10d::Backend> chess_nccl_group(const c10::intrusive_ptr<c10d::Store> &store, int rank,
                                                   int world, std::chrono::milliseconds timeout, int device) {
  // NCCL binds a communicator to the current device: cuda:LOCAL_RANK.
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
}
