#include "evalsvc/scheduler/gpu_claim.h"

#include "evalsvc/common/error.h"
#include "evalsvc/common/log.h"
#include "evalsvc/scheduler/queue.h"
#include "evalsvc/scheduler/redis.h"

namespace evalsvc::scheduler {

std::unique_ptr<GpuClaim> GpuClaim::acquire(const GpuClaimOptions& o, const std::vector<std::string>& gpu_ids) {
  EVALSVC_CHECK(!o.owner.empty(), InputError, "GPU claim: empty owner");
  EVALSVC_CHECK(o.ttl >= std::chrono::milliseconds(300), InputError, "GPU claim: TTL {} ms is under 300 ms", o.ttl.count());
  RedisClient redis(o.redis_url);
  const std::string ttl = std::to_string(o.ttl.count());
  for (size_t i = 0; i < gpu_ids.size(); ++i) {
    EVALSVC_CHECK(!gpu_ids[i].empty(), InputError, "GPU claim: GPU {} has an empty id", i);
    // SET NX is atomic: of two workers racing for this GPU, exactly one gets it.
    Reply r = redis.command({"SET", key(o.prefix, gpu_ids[i]), o.owner, "NX", "PX", ttl});
    if (r.is_status()) {
      spdlog::info("worker {} claimed GPU {} ({})", o.owner, i, gpu_ids[i]);
      return std::unique_ptr<GpuClaim>(new GpuClaim(o, i, gpu_ids[i]));
    }
  }
  return nullptr;
}

GpuClaim::GpuClaim(GpuClaimOptions options, size_t index, std::string id)
    : options_(std::move(options)), index_(index), id_(std::move(id)) {
  renewer_ = std::thread([this] { renew_loop(); });
}

GpuClaim::~GpuClaim() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (renewer_.joinable()) renewer_.join();
  try {
    RedisClient redis(options_.redis_url);
    RedisScript release("gpu-release-1", lua_script_source("gpu-release-1.lua"));
    redis.eval(release, {key(options_.prefix, id_)}, {options_.owner});
  } catch (const std::exception& e) {
    // The key expires on its own after the TTL.
    spdlog::warn("worker {}: releasing GPU {} failed (it frees itself in {} ms): {}", options_.owner, id_,
                 options_.ttl.count(), e.what());
  }
}

void GpuClaim::renew_loop() {
  RedisScript renew("gpu-renew-1", lua_script_source("gpu-renew-1.lua"));
  std::unique_ptr<RedisClient> redis;
  const std::string k = key(options_.prefix, id_), ttl = std::to_string(options_.ttl.count());
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, options_.ttl / 3, [this] { return stop_; })) {
    lock.unlock();
    try {
      if (!redis) redis = std::make_unique<RedisClient>(options_.redis_url);
      const long long r = redis->eval(renew, {k}, {options_.owner, ttl}).integer();
      if (r == 0 && held_.exchange(false)) {
        spdlog::error("worker {}: GPU {} is claimed by another worker now (this one stalled past the {} ms TTL)",
                      options_.owner, id_, options_.ttl.count());
      } else if (r == 2) {
        spdlog::warn("worker {}: the claim on GPU {} had disappeared from Redis; taken again", options_.owner, id_);
      }
    } catch (const std::exception& e) {
      // Redis restarting: keep trying; the claim survives as long as the TTL.
      spdlog::warn("worker {}: renewing the claim on GPU {}: {}", options_.owner, id_, e.what());
      redis.reset();
    }
    lock.lock();
  }
}

}  // namespace evalsvc::scheduler
