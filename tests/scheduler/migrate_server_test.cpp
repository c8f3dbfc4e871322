// migrate() against a real PostgreSQL started by LocalPostgres: idempotence, concurrent callers, edited and
// failing migrations.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <fstream>
#include <thread>

#include <pqxx/pqxx>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/local_postgres.h"
#include "evalsvc/scheduler/store.h"

namespace evalsvc::scheduler {
namespace {

namespace fs = std::filesystem;

fs::path make_temp_dir(const char* prefix) {
  std::string tmpl = (fs::temp_directory_path() / (std::string(prefix) + "-XXXXXX")).string();
  char* p = ::mkdtemp(tmpl.data());
  if (p == nullptr) throw IoError("mkdtemp failed for " + tmpl);
  return p;
}

size_t count_sql_files(const fs::path& dir) {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.path().extension() == ".sql";
  return n;
}

class MigrateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = make_temp_dir("qbench-migrate-pg");
    LocalPostgresOptions o;
    o.root = root_;
    o.durable = false;
    pg_ = std::make_unique<LocalPostgres>(o);
  }
  static void TearDownTestSuite() {
    pg_.reset();
    std::error_code ec;
    evalsvc::remove_tree(root_, ec);
  }

  /// A fresh database for the current test, so tests never see each other's schema.
  std::string fresh_db() {
    std::string name = std::string("m_") + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    return pg_->create_database(name);
  }

  /// A scratch copy of the real migrations that a test may edit.
  fs::path copy_migrations() {
    fs::path dir = make_temp_dir("qbench-migrations");
    scratch_.push_back(dir);
    for (const auto& e : fs::directory_iterator(find_migrations_dir())) fs::copy(e.path(), dir / e.path().filename());
    return dir;
  }
  void TearDown() override {
    std::error_code ec;
    for (const auto& d : scratch_) evalsvc::remove_tree(d, ec);
  }

  static std::vector<std::string> tables(const std::string& url) {
    pqxx::connection c(url);
    pqxx::read_transaction tx(c);
    std::vector<std::string> out;
    for (const auto& r : tx.exec("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                                 "ORDER BY table_name"))
      out.push_back(r[0].c_str());
    return out;
  }

  static inline std::unique_ptr<LocalPostgres> pg_;
  static inline fs::path root_;
  std::vector<fs::path> scratch_;
};

TEST_F(MigrateTest, FindsTheSourceTreeMigrations) {
  const fs::path dir = find_migrations_dir();
  EXPECT_TRUE(fs::exists(dir / "0001_initial_schema.sql")) << dir;
}

TEST_F(MigrateTest, SecondMigrateIsANoOp) {
  const std::string url = fresh_db();
  const fs::path dir = find_migrations_dir();
  const size_t n_files = count_sql_files(dir);

  MigrateResult first = migrate(url, dir);
  EXPECT_EQ(first.applied.size(), n_files);
  EXPECT_EQ(first.applied.front(), "0001_initial_schema.sql");
  EXPECT_GE(first.version, 1);

  const std::vector<std::string> t = tables(url);
  for (const char* want : {"bench_results", "eval_shards", "experiments", "jobs", "predictions", "schema_migrations",
                           "training_runs", "variant_metrics", "variants", "workers"})
    EXPECT_NE(std::find(t.begin(), t.end(), want), t.end()) << "missing table/view " << want;

  MigrateResult second = migrate(url, dir);
  EXPECT_TRUE(second.applied.empty());
  EXPECT_EQ(second.version, first.version);

  pqxx::connection c(url);
  pqxx::read_transaction tx(c);
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM schema_migrations")[0].as<size_t>(), n_files);
  // The recorded checksum is the sha256 of the file, as documented in docs/results-schema.md.
  EXPECT_EQ(tx.exec1("SELECT length(checksum) FROM schema_migrations WHERE version = 1")[0].as<int>(), 64);
}

TEST_F(MigrateTest, ConcurrentMigratesApplyEachFileOnce) {
  const std::string url = fresh_db();
  const fs::path dir = find_migrations_dir();
  const size_t n_files = count_sql_files(dir);
  constexpr int kThreads = 4;
  std::vector<MigrateResult> results(kThreads);
  std::vector<std::string> errors(kThreads);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();  // start together
      try {
        results[i] = migrate(url, dir);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  size_t applied = 0;
  int appliers = 0;
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_EQ(errors[i], "") << "thread " << i;
    applied += results[i].applied.size();
    appliers += !results[i].applied.empty();
    EXPECT_EQ(results[i].version, results[0].version);
  }
  EXPECT_EQ(applied, n_files);
  EXPECT_EQ(appliers, 1);
}

TEST_F(MigrateTest, EditedMigrationIsRefusedNamingTheFile) {
  const std::string url = fresh_db();
  const fs::path dir = copy_migrations();
  migrate(url, dir);

  {
    std::ofstream(dir / "0001_initial_schema.sql", std::ios::app) << "\n-- an innocent-looking edit\n";
  }
  std::ofstream(dir / "0999_later.sql") << "CREATE TABLE later_table (x integer);\n";
  try {
    migrate(url, dir);
    FAIL() << "an edited migration was accepted";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find((dir / "0001_initial_schema.sql").string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("edited"), std::string::npos) << msg;
  }
  // Nothing after the refusal was applied.
  const std::vector<std::string> t = tables(url);
  EXPECT_EQ(std::find(t.begin(), t.end(), "later_table"), t.end());
}

TEST_F(MigrateTest, FailingMigrationAppliesNothing) {
  const std::string url = fresh_db();
  const fs::path dir = copy_migrations();
  std::ofstream(dir / "0998_broken.sql") << "CREATE TABLE half_done (x integer);\nSELEC oops;\n";
  try {
    migrate(url, dir);
    FAIL() << "a broken migration was accepted";
  } catch (const DatabaseError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("0998_broken.sql"), std::string::npos) << msg;
    EXPECT_NE(msg.find("syntax error"), std::string::npos) << msg;
    EXPECT_EQ(msg.find(pg_->password()), std::string::npos) << msg;
  }
  // One transaction: not even 0001 or the ledger landed.
  EXPECT_TRUE(tables(url).empty());

  fs::remove(dir / "0998_broken.sql");
  EXPECT_EQ(migrate(url, dir).applied.size(), count_sql_files(dir));
}

TEST_F(MigrateTest, BadFileNamesAndFoldersAreInputErrors) {
  const std::string url = fresh_db();
  const fs::path dir = copy_migrations();
  std::ofstream(dir / "2_no_padding.sql") << "SELECT 1;\n";
  EXPECT_THROW(migrate(url, dir), InputError);
  fs::remove(dir / "2_no_padding.sql");
  std::ofstream(dir / "0001_duplicate_version.sql") << "SELECT 1;\n";
  EXPECT_THROW(migrate(url, dir), InputError);
  EXPECT_THROW(migrate(url, dir / "missing"), IoError);
  EXPECT_TRUE(tables(url).empty());
}

TEST_F(MigrateTest, UnreachableServerIsADatabaseErrorWithoutThePassword) {
  const fs::path dir = find_migrations_dir();
  const std::string url = "postgresql://qbench:hunter2secret@127.0.0.1:1/qbench?connect_timeout=2";
  try {
    migrate(url, dir);
    FAIL() << "migrate to port 1 succeeded";
  } catch (const DatabaseError& e) {
    EXPECT_EQ(std::string(e.what()).find("hunter2secret"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("127.0.0.1"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace evalsvc::scheduler
