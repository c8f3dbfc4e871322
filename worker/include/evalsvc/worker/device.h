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

/// {"device": "NVIDIA H100 80GB HBM3" | "AMD EPYC 7B13 (2 cores, 1 torch threads, 1 OpenBLAS threads)",
///  "kind": "cuda"|"cpu", "libtorch": "...", "cuda": "13.0" | null, "qbench": "...", "date": ISO-8601 UTC,
///  "host": hostname}. A CPU names libtorch's threads and, where the process has OpenBLAS, its pool's.
nlohmann::json describe_device(const torch::Device& device);

/// libtorch's CPU threads, and the BLAS's own pool where that is OpenBLAS (Debian's libtorch multiplies fp32
/// matrices through it): torch::set_num_threads leaves OpenBLAS's pool at one thread a core, and two such
/// processes on one machine (a bench beside an eval on the other worker) spin against each other. On the 2-core
/// dev machine a tiny fp32 batch-1 forward beside a batch-256 load took p90 26-28 ms with OpenBLAS's default
/// pool and 2.2 ms with it at 1 (docs/results/README.md, "CPU timings beside another worker"). n <= 0 leaves
/// both as they are.
void set_cpu_threads(int n);

/// OpenBLAS's pool size, or 0 where the process has no OpenBLAS (another BLAS, or none loaded).
int openblas_threads();

/// Blocks until queued work on `device` is done (no-op on CPU): timings must include the kernels.
void synchronize(const torch::Device& device);

}  // namespace evalsvc::worker
