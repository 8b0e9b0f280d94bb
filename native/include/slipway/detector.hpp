// Slipway C++ inference runtime: one TorchScript detector export (model.torchscript.pt + model.json).
//
// The header deliberately names no libtorch type: a C++ project that links SlipwayRuntime needs
// neither libtorch's headers nor its CMake package, only this header and the shared library.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(_WIN32)
#define SLIPWAY_API __declspec(dllexport)
#else
#define SLIPWAY_API __attribute__((visibility("default")))
#endif

namespace slipway {

// Every failure the runtime reports (bad model folder, bad image, libtorch error) is one of these.
class SLIPWAY_API Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One detection, as in docs/architecture.md: box x1, y1, x2, y2 in original-image pixels.
struct Detection {
  std::array<float, 4> box{};
  float score = 0.0f;
  int64_t class_id = 0;
  std::string label;
};

// Milliseconds spent in each stage of one predict() call, measured with a steady clock.
struct Timings {
  double preprocess_ms = 0.0;
  double inference_ms = 0.0;
  double postprocess_ms = 0.0;
  double total_ms = 0.0;
};

// The fields of model.json the runtime uses.
struct ModelInfo {
  std::string name;
  std::string version;
  std::string framework_version;
  int input_height = 0;
  int input_width = 0;
  std::array<float, 3> mean{};
  std::array<float, 3> std{};
  std::vector<std::string> labels;
  double score_threshold = 0.0;
  double nms_iou = 0.0;
  int max_detections = 0;
  std::string torchscript_path;  // absolute or relative to the working directory, as resolved
};

struct Options {
  // Intra-op threads (at::set_num_threads). Applied on every thread that calls predict(), because
  // with OpenMP the setting belongs to the calling thread.
  int threads = 2;
  // Inter-op threads (at::set_num_interop_threads); 0 leaves libtorch's default. libtorch accepts
  // this once per process, before any inter-op work: a later, different value is an Error.
  int interop_threads = 0;
  // Forward passes on a blank input at load time, so that the TorchScript profiling executor has
  // optimised the graph before the first real request: it records shapes on the first run and
  // compiles on the second, so the third is the first at full speed.
  int warmup_runs = 3;
  // Let libtorch's oneDNN Graph fuser compile the frozen model's convolution chains into fused
  // kernels (torch::jit::fuser::onednn). On the example detector at 2 threads the forward pass
  // takes about a third of the unfused time, with the same detections (max difference ~1e-5).
  // Needs warmup_runs >= 2, which prove it at load time: a model the fuser fails on is loaded
  // again unfused (see fusion_error()). libtorch keeps the switch per process and applies it to
  // every graph optimised after it is set: construct Detectors that disagree one at a time.
  bool onednn_fusion = true;
};

class SLIPWAY_API Detector {
 public:
  // model_path: a folder holding model.json, or the TorchScript file itself (model.json beside it).
  explicit Detector(const std::string& model_path, const Options& options = Options());
  ~Detector();
  Detector(Detector&&) noexcept;
  Detector& operator=(Detector&&) noexcept;
  Detector(const Detector&) = delete;
  Detector& operator=(const Detector&) = delete;

  // image: uint8 RGB, row-major HWC with 3 channels, any size. Safe to call from several threads.
  std::vector<Detection> predict(const uint8_t* image, int height, int width, Timings* timings = nullptr) const;

  // The model input predict() builds: float32 [1, 3, input_height, input_width], NCHW.
  std::vector<float> preprocess(const uint8_t* image, int height, int width) const;

  // Changes the intra-op thread count used by later predict() calls.
  void set_threads(int threads);
  int threads() const;

  const ModelInfo& info() const;

  // How many fused oneDNN Graph partitions the optimised model runs (0: none, so unfused);
  // -1 when unknown (fewer than 2 warm-up runs: the graph is optimised on the second run).
  int fusion_groups() const;
  // Why the fuser was given up while loading (the model then runs unfused); empty if it was not.
  const std::string& fusion_error() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// "major.minor.patch" of this library, and the libtorch version it was built against.
SLIPWAY_API std::string version();
SLIPWAY_API std::string torch_version();

}  // namespace slipway
