// set_cpu_threads and the CPU description every measured figure carries.
#include <gtest/gtest.h>

#include "evalsvc/worker/device.h"

using namespace evalsvc::worker;

namespace {

class CpuThreads : public ::testing::Test {
 protected:
  void SetUp() override {
    torch_before_ = torch::get_num_threads();
    blas_before_ = openblas_threads();
  }
  void TearDown() override {  // both pools as they were (they may have started out different)
    if (blas_before_ > 0) set_cpu_threads(blas_before_);
    torch::set_num_threads(torch_before_);
  }
  int torch_before_ = 0;
  int blas_before_ = 0;
};

TEST_F(CpuThreads, SetsLibtorchAndOpenBlasPools) {
  set_cpu_threads(1);
  EXPECT_EQ(torch::get_num_threads(), 1);
  if (blas_before_ == 0) GTEST_SKIP() << "this process has no OpenBLAS (another BLAS is selected for libblas.so.3)";
  EXPECT_EQ(openblas_threads(), 1);
  set_cpu_threads(2);
  EXPECT_EQ(torch::get_num_threads(), 2);
  EXPECT_EQ(openblas_threads(), 2);
}

TEST_F(CpuThreads, ZeroLeavesBothAsTheyAre) {
  set_cpu_threads(1);
  set_cpu_threads(0);
  EXPECT_EQ(torch::get_num_threads(), 1);
  if (blas_before_ > 0) EXPECT_EQ(openblas_threads(), 1);
}

TEST_F(CpuThreads, CpuDescriptionNamesBothPools) {
  set_cpu_threads(1);
  const auto d = describe_device(torch::Device(torch::kCPU));
  EXPECT_EQ(d.at("kind"), "cpu");
  const std::string name = d.at("device").get<std::string>();
  EXPECT_NE(name.find("1 torch threads"), std::string::npos) << name;
  if (blas_before_ > 0) {
    EXPECT_NE(name.find(", 1 OpenBLAS threads)"), std::string::npos) << name;
  } else {
    EXPECT_EQ(name.find("OpenBLAS"), std::string::npos) << name;
  }
}

}  // namespace
