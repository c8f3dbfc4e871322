// remove_tree: qbench's replacement for std::filesystem::remove_all (see paths.h for why it exists).
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"

namespace fs = std::filesystem;
using namespace evalsvc;

namespace {

class RemoveTree : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            fmt::format("qbench_paths_test_{}_{}", ::getpid(), ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(root_);
  }
  void TearDown() override {
    std::error_code ec;
    remove_tree(root_, ec);
  }
  fs::path root_;
};

TEST_F(RemoveTree, RemovesNestedFoldersAndFiles) {
  const fs::path top = root_ / "top";
  fs::create_directories(top / "a" / "b" / "c");
  fs::create_directories(top / "empty");
  write_file_atomic(top / "a" / "one.txt", "1");
  write_file_atomic(top / "a" / "b" / "c" / "two.txt", "2");
  remove_tree(top);
  EXPECT_FALSE(fs::exists(top));
  EXPECT_TRUE(fs::exists(root_));
}

TEST_F(RemoveTree, DoesNotFollowSymlinks) {
  const fs::path keep = root_ / "keep";
  fs::create_directories(keep);
  write_file_atomic(keep / "precious.txt", "x");
  const fs::path top = root_ / "top";
  fs::create_directories(top);
  fs::create_directory_symlink(keep, top / "link_to_keep");
  remove_tree(top);
  EXPECT_FALSE(fs::exists(top));
  EXPECT_TRUE(fs::exists(keep / "precious.txt"));
  // A symlink given as the path itself is removed, not its target.
  fs::create_directory_symlink(keep, root_ / "link");
  remove_tree(root_ / "link");
  EXPECT_FALSE(fs::exists(fs::symlink_status(root_ / "link")));
  EXPECT_TRUE(fs::exists(keep / "precious.txt"));
}

TEST_F(RemoveTree, MissingPathIsNoErrorAndAFileIsRemoved) {
  EXPECT_NO_THROW(remove_tree(root_ / "nowhere"));
  write_file_atomic(root_ / "file.txt", "x");
  remove_tree(root_ / "file.txt");
  EXPECT_FALSE(fs::exists(root_ / "file.txt"));
}

TEST_F(RemoveTree, FailureNamesThePathAndTheReason) {
  write_file_atomic(root_ / "file.txt", "x");
  const fs::path bad = root_ / "file.txt" / "below";  // a path through a regular file: ENOTDIR
  std::error_code ec;
  EXPECT_FALSE(remove_tree(bad, ec));
  EXPECT_EQ(ec, std::errc::not_a_directory);
  try {
    remove_tree(bad);
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(bad.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Not a directory"), std::string::npos) << e.what();
  }
}

}  // namespace
