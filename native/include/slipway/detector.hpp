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
  // optimised the graph before the first real request.
  int warmup_runs = 2;
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

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// "major.minor.patch" of this library, and the libtorch version it was built against.
SLIPWAY_API std::string version();
SLIPWAY_API std::string torch_version();

}  // namespace slipway
