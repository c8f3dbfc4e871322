#pragma once
// `qbench model fetch`: downloads a GPT-2 checkpoint (config.json + model.safetensors) from the Hugging
// Face hub, or any base URL laid out like it (http, https or file://), for users who are online.
// Downloads are resumable (FILE.part + HTTP Range), checked (HTTP status, Content-Length/Content-Range
// against the bytes received, the sha256 the hub sends as X-Linked-Etag/ETag, then the safetensors header
// and the weights against config.json) and renamed into place only when complete and valid.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

namespace evalsvc::worker {

/// Options of fetch_model; the defaults suit the hub.
struct FetchOptions {
  /// Transfers per file: a transfer that breaks off (connection cut, timeout) resumes from the bytes
  /// already in FILE.part until this many attempts were made.
  int max_attempts = 5;
  /// Seconds to wait for a connection.
  long connect_timeout_s = 30;
  /// A transfer slower than 1 KiB/s for this many seconds is broken off (and resumed).
  long stall_timeout_s = 60;
  /// Pause before a resumed attempt, in milliseconds (doubled each time).
  long retry_delay_ms = 1000;
  /// Download again even when dest already holds a valid checkpoint.
  bool force = false;
  /// Called during transfers with (file name, bytes so far including resumed ones, total or 0 if unknown).
  std::function<void(const std::string& file, uint64_t done, uint64_t total)> progress;
};

/// What fetch_model did for each file.
struct FetchReport {
  bool already_present = false;  ///< dest held a valid checkpoint and nothing was downloaded
  uint64_t bytes_downloaded = 0;  ///< bytes received over all attempts (resumed bytes not counted twice)
  int resumed_transfers = 0;      ///< transfers that continued a FILE.part with a Range request
  bool sha256_verified = false;   ///< model.safetensors matched a sha256 sent by the server
};

/// The hub URL base of a model: https://huggingface.co/<model>/resolve/main/
std::string hub_source(const std::string& model);

/// Downloads source_base + "config.json" and source_base + "model.safetensors" into dest (created if
/// needed); a missing trailing '/' on source_base is added. Throws IoError for transport failures and
/// HTTP errors (naming the URL and status; a 404 says the file is not there), FormatError when the bytes
/// are not a valid GPT-2 checkpoint or do not match the server's sha256. On any failure no final file is
/// left in dest: only FILE.part of a transfer that broke off (kept so a rerun resumes it); a part that
/// proved corrupt is deleted.
FetchReport fetch_model(const std::string& source_base, const std::filesystem::path& dest, const FetchOptions& options);

}  // namespace evalsvc::worker
