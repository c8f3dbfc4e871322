// GPU claims against a real redis-server: one GPU per worker when several workers see the same GPUs
// (docker-compose replicas), kept alive past the TTL by renewal, freed by release or by expiry after a
// crash, never released on behalf of someone else, and exclusive under a race.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <set>
#include <thread>

#include "evalsvc/common/paths.h"
#include "evalsvc/common/error.h"
#include "evalsvc/scheduler/gpu_claim.h"
#include "evalsvc/scheduler/local_servers.h"
#include "evalsvc/scheduler/redis.h"

namespace evalsvc::scheduler {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

class GpuClaimServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "qbench-gpuclaim-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    server_ = std::make_unique<LocalRedis>(LocalRedis::Options{.dir = dir_, .password = std::string("pw")});
    redis_ = std::make_unique<RedisClient>(server_->url());
  }
  void TearDown() override {
    redis_.reset();
    server_.reset();
    std::error_code ec;
    evalsvc::remove_tree(dir_, ec);
  }
  GpuClaimOptions opts(const std::string& owner, milliseconds ttl = milliseconds(15000)) {
    GpuClaimOptions o;
    o.redis_url = server_->url();
    o.owner = owner;
    o.ttl = ttl;
    return o;
  }
  std::optional<std::string> holder(const std::string& id) {
    return redis_->command({"GET", GpuClaim::key("qbench", id)}).opt_string();
  }

  const std::vector<std::string> gpus_ = {"GPU-aaaa", "GPU-bbbb", "GPU-cccc"};
  fs::path dir_;
  std::unique_ptr<LocalRedis> server_;
  std::unique_ptr<RedisClient> redis_;
};

TEST_F(GpuClaimServerTest, OneGpuPerWorkerUntilAllAreTaken) {
  auto a = GpuClaim::acquire(opts("w-a"), gpus_);
  auto b = GpuClaim::acquire(opts("w-b"), gpus_);
  auto c = GpuClaim::acquire(opts("w-c"), gpus_);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->index(), 0u);
  EXPECT_EQ(b->index(), 1u);
  EXPECT_EQ(c->index(), 2u);
  EXPECT_EQ(b->id(), "GPU-bbbb");
  EXPECT_EQ(holder("GPU-bbbb"), "w-b");
  EXPECT_EQ(GpuClaim::acquire(opts("w-d"), gpus_), nullptr) << "a fourth worker on three GPUs";
  // A released GPU is the next one handed out.
  b.reset();
  EXPECT_EQ(holder("GPU-bbbb"), std::nullopt);
  auto d = GpuClaim::acquire(opts("w-d"), gpus_);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->index(), 1u);
  EXPECT_TRUE(d->held());
}

TEST_F(GpuClaimServerTest, RenewalOutlivesTheTtlAndACrashedOwnerExpires) {
  auto a = GpuClaim::acquire(opts("w-a", milliseconds(400)), gpus_);
  ASSERT_TRUE(a);
  std::this_thread::sleep_for(milliseconds(1300));  // more than 3 TTLs
  EXPECT_EQ(holder("GPU-aaaa"), "w-a");
  EXPECT_TRUE(a->held());
  // A worker killed -9 never releases: its key (written here directly) blocks the GPU for its TTL only.
  redis_->command({"SET", GpuClaim::key("qbench", "GPU-bbbb"), "w-crashed", "PX", "500"});
  auto b = GpuClaim::acquire(opts("w-b"), {"GPU-bbbb"});
  EXPECT_EQ(b, nullptr);
  std::this_thread::sleep_for(milliseconds(700));
  b = GpuClaim::acquire(opts("w-b"), {"GPU-bbbb"});
  ASSERT_TRUE(b);
  EXPECT_EQ(holder("GPU-bbbb"), "w-b");
}

TEST_F(GpuClaimServerTest, ATakenOverClaimIsNotReleasedAndALostKeyIsRetaken) {
  auto a = GpuClaim::acquire(opts("w-a", milliseconds(300)), gpus_);
  ASSERT_TRUE(a);
  // The key vanishes (Redis restarted without it): the next renewal sets it again.
  redis_->command({"DEL", GpuClaim::key("qbench", "GPU-aaaa")});
  std::this_thread::sleep_for(milliseconds(250));
  EXPECT_EQ(holder("GPU-aaaa"), "w-a");
  EXPECT_TRUE(a->held());
  // Another worker holds it now (as after a stall past the TTL): the claim says so and leaves it alone.
  redis_->command({"SET", GpuClaim::key("qbench", "GPU-aaaa"), "w-other", "PX", "60000"});
  std::this_thread::sleep_for(milliseconds(250));
  EXPECT_FALSE(a->held());
  a.reset();
  EXPECT_EQ(holder("GPU-aaaa"), "w-other") << "released a claim that was not ours";
}

TEST_F(GpuClaimServerTest, RacingWorkersGetDistinctGpus) {
  std::vector<std::unique_ptr<GpuClaim>> got(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < got.size(); ++i) {
    threads.emplace_back([&, i] { got[i] = GpuClaim::acquire(opts("w-" + std::to_string(i)), gpus_); });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> ids;
  size_t n = 0;
  for (const auto& g : got) {
    if (!g) continue;
    ++n;
    ids.insert(g->id());
  }
  EXPECT_EQ(n, 3u);
  EXPECT_EQ(ids.size(), 3u);
}

TEST_F(GpuClaimServerTest, BadInputIsRejected) {
  EXPECT_THROW(GpuClaim::acquire(opts(""), gpus_), InputError);
  EXPECT_THROW(GpuClaim::acquire(opts("w", milliseconds(100)), gpus_), InputError);
  EXPECT_THROW(GpuClaim::acquire(opts("w"), {""}), InputError);
  EXPECT_EQ(GpuClaim::acquire(opts("w"), {}), nullptr) << "no GPU, nothing to claim";
  GpuClaimOptions o = opts("w");
  o.redis_url = "redis://127.0.0.1:1/0";
  EXPECT_THROW(GpuClaim::acquire(o, gpus_), RedisError);
}

}  // namespace
}  // namespace evalsvc::scheduler
