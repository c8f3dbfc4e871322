// `qbench parity DIR`: compares qbench's logits with those Hugging Face transformers recorded for the same
// checkpoint (scripts/hf_parity.py). Exit 1 when a dtype is outside its tolerance.
#include <iostream>

#include "commands.h"
#include "evalsvc/worker/device.h"
#include "evalsvc/worker/parity.h"

namespace evalsvc::cli {
namespace {

// fp32 must agree to rounding; half precision differs by accumulation order and rounding of activations.
double tolerance(const std::string& dtype) { return dtype == "fp32" ? 1e-4 : dtype == "fp16" ? 2e-2 : 1e-1; }

CommandRegistrar reg("parity", "Check logits against Hugging Face transformers (scripts/hf_parity.py output)",
                     [](CLI::App& sub) -> RunFn {
  auto dir = std::make_shared<std::string>();
  auto dtypes = std::make_shared<std::vector<std::string>>(std::vector<std::string>{"fp32"});
  auto device = std::make_shared<std::string>("auto");
  sub.add_option("dir", *dir, "folder with config.json, model.safetensors, logits.json")->required();
  sub.add_option("--dtype", *dtypes, "fp32 fp16 bf16")->capture_default_str();
  sub.add_option("--device", *device, "auto | cpu | cuda")->capture_default_str();
  return [=] {
    const auto dev = worker::pick_device(*device);
    int rc = kOk;
    for (const auto& dt : *dtypes) {
      auto r = worker::check_parity(*dir, dt, dev);
      const bool ok = r.max_abs_diff <= tolerance(dt) && r.same_argmax;
      std::cout << nlohmann::json{{"dtype", dt}, {"device", dev.str()}, {"max_abs_diff", r.max_abs_diff},
                                  {"tolerance", tolerance(dt)}, {"max_abs_logit", r.max_abs_logit},
                                  {"same_argmax", r.same_argmax}, {"ok", ok}}
                       .dump()
                << std::endl;
      if (!ok) rc = kFailed;
    }
    return rc;
  };
});

}  // namespace
}  // namespace evalsvc::cli
