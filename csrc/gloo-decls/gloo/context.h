// Stand-in declaration of gloo::Context (see README.md): only what ProcessGroupGloo.hpp uses.
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
