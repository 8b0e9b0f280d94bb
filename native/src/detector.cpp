#include "slipway/detector.hpp"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/jit/codegen/onednn/interface.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <sstream>

#include "image_ops.hpp"

#ifndef SLIPWAY_VERSION
#define SLIPWAY_VERSION "0.0.0"
#endif
#ifndef SLIPWAY_TORCH_VERSION
#define SLIPWAY_TORCH_VERSION "unknown"
#endif

namespace slipway {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// c10::Error's what() carries a C++ backtrace; users want the message.
[[noreturn]] void rethrow_torch(const std::string& context, const c10::Error& e) {
  throw Error(context + ": " + e.what_without_backtrace());
}

// The first n non-empty lines of a message (libtorch's JIT errors go on with the whole graph).
std::string first_lines(const std::string& text, int n) {
  std::string out, line;
  std::istringstream in(text);
  while (n > 0 && std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    out += (out.empty() ? "" : " ") + line;
    --n;
  }
  return out;
}

// prim::oneDNNFusionGroup nodes in a graph, nested blocks (the guards' fast paths) included.
int count_fusion_groups(const torch::jit::Block* block) {
  int n = 0;
  for (const torch::jit::Node* node : block->nodes()) {
    if (std::string(node->kind().toQualString()).rfind("prim::oneDNNFusionGroup", 0) == 0) ++n;
    for (const torch::jit::Block* inner : node->blocks()) n += count_fusion_groups(inner);
  }
  return n;
}

void set_interop_threads(int n) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  try {
    at::set_num_interop_threads(n);
  } catch (const c10::Error&) {
    // Already set (or the pool already started): fine when it already has the wanted size.
    if (at::get_num_interop_threads() != n) {
      throw Error("interop_threads=" + std::to_string(n) + ": libtorch fixes the inter-op thread count once per "
                  "process and it is already " + std::to_string(at::get_num_interop_threads()));
    }
  }
}

}  // namespace

struct Detector::Impl {
  ModelInfo info;
  detail::PostprocessParams post;
  torch::jit::Module module;
  std::atomic<int> threads{2};
  int fusion_groups = -1;  // fused oneDNN Graph partitions in the optimised graph; -1: not known
  std::string fusion_error;  // why fusion was given up at load time; empty if it was not

  void apply_threads() const {
    // With OpenMP the thread count is a property of the calling thread: set it where we run.
    const int n = threads.load(std::memory_order_relaxed);
    if (at::get_num_threads() != n) at::set_num_threads(n);
  }

  torch::Tensor make_input(const uint8_t* image, int height, int width) const {
    torch::Tensor x = torch::empty({1, 3, info.input_height, info.input_width}, torch::kFloat32);
    // One thread: splitting the rows over the intra-op threads measured no faster (waking them costs
    // about what the second half of the rows does).
    detail::resize_normalize(image, height, width, info.input_height, info.input_width, info.mean, info.std,
                             x.data_ptr<float>());
    return x;
  }

  // Loads the TorchScript file and runs `runs` forward passes on a blank input, with libtorch's
  // oneDNN Graph fuser on or off; counts the fused partitions when the graph got optimised.
  void load_and_warm_up(int runs, bool fuse) {
    try {
      module = torch::jit::load(info.torchscript_path, torch::kCPU);
    } catch (const c10::Error& e) {
      rethrow_torch("cannot load " + info.torchscript_path, e);
    }
    module.eval();
    // Registers (or removes) the fuser as a graph pre-pass: the switch libtorch actually reads.
    torch::jit::RegisterLlgaFuseGraph::setEnabled(fuse);
    if (runs <= 0) return;
    torch::Tensor blank = torch::zeros({1, 3, info.input_height, info.input_width}, torch::kFloat32);
    for (int i = 0; i < runs; ++i) forward(blank);
    // The graph this thread's last forward ran, once the profiling executor has optimised it.
    if (runs >= 2) {
      auto graph = torch::jit::lastExecutedOptimizedGraph();
      fusion_groups = graph ? count_fusion_groups(graph->block()) : -1;
    }
  }

  // Runs the module; returns contiguous CPU tensors boxes [K, 4] float, scores [K] float, classes [K] int64.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) const {
    torch::jit::IValue out;
    try {
      // forward() is not const in libtorch's API, yet running a loaded module concurrently is supported.
      out = const_cast<torch::jit::Module&>(module).forward({x});
    } catch (const c10::Error& e) {
      rethrow_torch("model forward failed", e);
    }
    if (!out.isTuple() || out.toTupleRef().elements().size() != 3) {
      throw Error("the model must return a tuple (boxes [N, K, 4], scores [N, K], classes [N, K])");
    }
    const auto& el = out.toTupleRef().elements();
    if (!el[0].isTensor() || !el[1].isTensor() || !el[2].isTensor()) {
      throw Error("the model must return three tensors (boxes, scores, classes)");
    }
    torch::Tensor boxes = el[0].toTensor(), scores = el[1].toTensor(), classes = el[2].toTensor();
    if (boxes.dim() != 3 || boxes.size(0) != 1 || boxes.size(2) != 4 || scores.dim() != 2 ||
        scores.size(1) != boxes.size(1) || classes.dim() != 2 || classes.size(1) != boxes.size(1)) {
      throw Error("unexpected output shapes: boxes " + c10::str(boxes.sizes()) + ", scores " + c10::str(scores.sizes()) +
                  ", classes " + c10::str(classes.sizes()) + " (expected [1, K, 4], [1, K], [1, K])");
    }
    return {boxes[0].to(torch::kCPU, torch::kFloat32).contiguous(), scores[0].to(torch::kCPU, torch::kFloat32).contiguous(),
            classes[0].to(torch::kCPU, torch::kInt64).contiguous()};
  }
};

Detector::Detector(const std::string& model_path, const Options& options) : impl_(std::make_unique<Impl>()) {
  if (options.threads < 1) throw Error("threads must be at least 1");
  if (options.interop_threads < 0) throw Error("interop_threads must be 0 (default) or more");
  impl_->info = detail::read_model_info(model_path);
  impl_->post.score_threshold = impl_->info.score_threshold;
  impl_->post.nms_iou = impl_->info.nms_iou;
  impl_->post.max_detections = impl_->info.max_detections;
  impl_->post.input_height = impl_->info.input_height;
  impl_->post.input_width = impl_->info.input_width;
  impl_->threads = options.threads;
  if (options.interop_threads > 0) set_interop_threads(options.interop_threads);
  impl_->apply_threads();

  // Loading under InferenceMode too: the module's constants become inference tensors, which
  // never carry autograd state; nothing the runtime does needs gradients.
  c10::InferenceMode guard;
  // Fusion is switched on only when the warm-up can prove it at load time: the profiling executor
  // optimises (and fuses) on the second run. libtorch's fuser fails on some graphs (measured: a
  // GRU's hidden-state list, "Schema not found for node"); such a model is then loaded again and
  // runs unfused, and fusion_error() says why.
  const bool fuse = options.onednn_fusion && options.warmup_runs >= 2;
  try {
    impl_->load_and_warm_up(options.warmup_runs, fuse);
  } catch (const std::exception& e) {
    if (!fuse) throw;
    impl_->fusion_error = first_lines(e.what(), 2);
    impl_->load_and_warm_up(options.warmup_runs, false);
  }
}

Detector::~Detector() = default;
Detector::Detector(Detector&&) noexcept = default;
Detector& Detector::operator=(Detector&&) noexcept = default;

std::vector<Detection> Detector::predict(const uint8_t* image, int height, int width, Timings* timings) const {
  if (!impl_) throw Error("this Detector was moved from");
  if (!image || height < 1 || width < 1) throw Error("predict needs a non-empty RGB image");
  const auto t0 = Clock::now();
  impl_->apply_threads();
  c10::InferenceMode guard;
  torch::Tensor x = impl_->make_input(image, height, width);
  const auto t1 = Clock::now();
  auto [boxes, scores, classes] = impl_->forward(x);
  const auto t2 = Clock::now();
  auto out = detail::postprocess(boxes.data_ptr<float>(), scores.data_ptr<float>(), classes.data_ptr<int64_t>(),
                                 boxes.size(0), impl_->post, height, width, impl_->info.labels);
  if (timings) {
    timings->preprocess_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    timings->inference_ms = std::chrono::duration<double, std::milli>(t2 - t1).count();
    timings->postprocess_ms = ms_since(t2);
    timings->total_ms = ms_since(t0);
  }
  return out;
}

std::vector<float> Detector::preprocess(const uint8_t* image, int height, int width) const {
  if (!impl_) throw Error("this Detector was moved from");
  if (!image || height < 1 || width < 1) throw Error("preprocess needs a non-empty RGB image");
  std::vector<float> out(static_cast<size_t>(3) * impl_->info.input_height * impl_->info.input_width);
  detail::resize_normalize(image, height, width, impl_->info.input_height, impl_->info.input_width, impl_->info.mean,
                           impl_->info.std, out.data());
  return out;
}

void Detector::set_threads(int threads) {
  if (!impl_) throw Error("this Detector was moved from");
  if (threads < 1) throw Error("threads must be at least 1");
  impl_->threads = threads;
}

int Detector::fusion_groups() const {
  if (!impl_) throw Error("this Detector was moved from");
  return impl_->fusion_groups;
}

const std::string& Detector::fusion_error() const {
  if (!impl_) throw Error("this Detector was moved from");
  return impl_->fusion_error;
}

int Detector::threads() const {
  if (!impl_) throw Error("this Detector was moved from");
  return impl_->threads.load();
}

const ModelInfo& Detector::info() const {
  if (!impl_) throw Error("this Detector was moved from");
  return impl_->info;
}

std::string version() { return SLIPWAY_VERSION; }
std::string torch_version() { return SLIPWAY_TORCH_VERSION; }

}  // namespace slipway
