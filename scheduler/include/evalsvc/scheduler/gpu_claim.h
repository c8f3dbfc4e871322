#pragma once
// One GPU per worker when several workers see the same GPUs. docker-compose cannot give each replica of a
// scaled service its own GPU (a reservation of `count: 1` hands GPU 0 to every replica), so the GPU worker
// service sees all of the host's GPUs and each worker claims one in Redis: key P:gpu:<id> = worker id,
// SET NX with a TTL that a thread of the claim renews (scheduler/lua/gpu-renew-1.lua). A worker that dies
// without releasing frees its GPU when the TTL runs out. The ids are GPU UUIDs, the same for every
// container on a host and different between hosts, so one Redis serves many hosts.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace evalsvc::scheduler {

struct GpuClaimOptions {
  std::string redis_url;
  std::string prefix = "qbench";
  std::string owner;                          ///< the worker id
  std::chrono::milliseconds ttl{15000};       ///< a dead owner's GPU is free again after this long
};

class GpuClaim {
 public:
  /// Claims the first of `gpu_ids` (in order) that nobody holds. nullptr when every one is held.
  /// InputError for an empty owner or id, a TTL under 300 ms; RedisError when Redis cannot be reached.
  static std::unique_ptr<GpuClaim> acquire(const GpuClaimOptions& options, const std::vector<std::string>& gpu_ids);

  /// Stops renewing and deletes the key if it is still this owner's.
  ~GpuClaim();
  GpuClaim(const GpuClaim&) = delete;
  GpuClaim& operator=(const GpuClaim&) = delete;

  /// Position of the claimed GPU in `gpu_ids` (its CUDA device index when the ids came in that order).
  size_t index() const { return index_; }
  const std::string& id() const { return id_; }
  /// False once a renewal found another owner on the key (this process stalled past the TTL and another
  /// worker took the GPU): the caller should stop using it.
  bool held() const { return held_.load(); }

  /// The Redis key of GPU `id`.
  static std::string key(const std::string& prefix, const std::string& id) { return prefix + ":gpu:" + id; }

 private:
  GpuClaim(GpuClaimOptions options, size_t index, std::string id);
  void renew_loop();

  GpuClaimOptions options_;
  size_t index_;
  std::string id_;
  std::atomic<bool> held_{true};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread renewer_;
};

}  // namespace evalsvc::scheduler
