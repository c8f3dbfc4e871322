#pragma once
// Device selection and the description every measured figure carries (SPEC section 3: a figure names
// the device it was measured on, the software versions and the date).
#include <string>

#include <nlohmann/json.hpp>

#include "evalsvc/kernels/torch_compat.h"

namespace evalsvc::worker {

/// "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N"; InputError for anything else or
/// for CUDA on a build/machine without it.
torch::Device pick_device(const std::string& spec);

/// {"device": "NVIDIA H100 80GB HBM3" | "CPU (2 cores)", "kind": "cuda"|"cpu", "libtorch": "...",
///  "cuda": "13.0" | null, "qbench": "...", "date": ISO-8601 UTC, "host": hostname}
nlohmann::json describe_device(const torch::Device& device);

/// Blocks until queued work on `device` is done (no-op on CPU): timings must include the kernels.
void synchronize(const torch::Device& device);

}  // namespace evalsvc::worker
