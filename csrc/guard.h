// The shim's error convention, shared by its units: every exported function catches C++
// exceptions and returns them as a malloc'd message (NULL on success), freed by
// chess_free_error.
#pragma once
#include <cstdlib>
#include <cstring>
#include <exception>

namespace chess_shim {
inline char *dup_error(const char *msg) {
  size_t n = std::strlen(msg);
  char *out = static_cast<char *>(std::malloc(n + 1));
  if (out) std::memcpy(out, msg, n + 1);
  return out;
}
}  // namespace chess_shim

#define GUARD(...)                                         \
  try {                                                    \
    __VA_ARGS__;                                           \
    return nullptr;                                        \
  } catch (const std::exception &e) {                      \
    return chess_shim::dup_error(e.what());                \
  } catch (...) {                                          \
    return chess_shim::dup_error("unknown C++ exception"); \
  }
