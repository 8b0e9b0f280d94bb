#include "image_ops.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

namespace slipway::detail {

namespace {

// Source indices and weights along one axis, as ATen's upsample_bilinear2d (align_corners=False)
// and model_export.preprocess._linear_weights compute them, in float32.
struct Axis {
  std::vector<int> i0, i1;
  std::vector<float> w0, w1;
};

Axis linear_axis(int in_size, int out_size) {
  Axis a;
  a.i0.resize(out_size);
  a.i1.resize(out_size);
  a.w0.resize(out_size);
  a.w1.resize(out_size);
  const float scale = static_cast<float>(static_cast<double>(in_size) / out_size);
  for (int i = 0; i < out_size; ++i) {
    float src = (static_cast<float>(i) + 0.5f) * scale - 0.5f;
    src = std::max(src, 0.0f);
    int lo = std::min(static_cast<int>(std::floor(src)), in_size - 1);
    a.i0[i] = lo;
    a.i1[i] = std::min(lo + 1, in_size - 1);
    a.w1[i] = src - static_cast<float>(lo);
    a.w0[i] = 1.0f - a.w1[i];
  }
  return a;
}

}  // namespace

namespace {

// The wheel targets baseline x86-64 (SSE2, 4 lanes); CPUs with AVX2 get a clone of the row loops
// below with 8 lanes, chosen once at load time. Internal linkage keeps the clones' dispatch
// inside this library. -ffp-contract=off still keeps every product and sum rounded on its own.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SLIPWAY_ROW_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SLIPWAY_ROW_CLONES
#endif

// dst[i] = (src[i] / 255 - mean) / std over one contiguous row: the divisions dominate the
// preprocessing time, and in this form the compiler issues them as vector instructions (which
// round exactly as the scalar ones, so the result stays bit-identical to the numpy reference).
SLIPWAY_ROW_CLONES void normalize_row(const float* __restrict src, float* __restrict dst, int n, float mean, float std) {
  for (int i = 0; i < n; ++i) dst[i] = (src[i] / 255.0f - mean) / std;
}

// Four floats as one vector (GCC/Clang vector extension: SSE on x86-64, NEON on aarch64); each
// lane rounds exactly as the scalar operation would.
typedef float F4 __attribute__((vector_size(16)));

// dst[i] = r0[i] * w0 + r1[i] * w1: two source rows blended, as floats.
SLIPWAY_ROW_CLONES void blend_rows(const uint8_t* __restrict r0, const uint8_t* __restrict r1, float w0, float w1, float* __restrict dst,
                size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(r0[i]) * w0 + static_cast<float>(r1[i]) * w1;
}

}  // namespace

void resize_normalize(const uint8_t* image, int height, int width, int out_height, int out_width,
                      const std::array<float, 3>& mean, const std::array<float, 3>& std, float* out) {
  const size_t plane = static_cast<size_t>(out_height) * out_width;
  const size_t row_stride = static_cast<size_t>(width) * 3;
  // One output row, channel-planar, before normalisation.
  std::vector<float> row(static_cast<size_t>(3) * out_width);
  float* const planes[3] = {row.data(), row.data() + out_width, row.data() + 2 * out_width};
  const bool same_size = height == out_height && width == out_width;
  const Axis ay = same_size ? Axis{} : linear_axis(height, out_height);
  const Axis ax = same_size ? Axis{} : linear_axis(width, out_width);
  // One padding float each, so that a 4-lane load or store at the last pixel stays inside.
  const bool wide = !same_size && width > 2 * out_width;
  std::vector<float> vertical(same_size || wide ? 0 : row_stride + 1);
  std::vector<float> interleaved(same_size ? 0 : static_cast<size_t>(3) * out_width + 1);
  for (int y = 0; y < out_height; ++y) {
    if (same_size) {
      const uint8_t* r = image + y * row_stride;
      for (int x = 0; x < out_width; ++x) {
        for (int c = 0; c < 3; ++c) planes[c][x] = static_cast<float>(r[x * 3 + c]);
      }
    } else if (wide) {
      // Much wider than the output: blending whole rows would read columns no output pixel
      // uses, so blend only the two source columns of each output pixel. Same arithmetic.
      const uint8_t* r0 = image + ay.i0[y] * row_stride;
      const uint8_t* r1 = image + ay.i1[y] * row_stride;
      const float wy0 = ay.w0[y], wy1 = ay.w1[y];
      for (int x = 0; x < out_width; ++x) {
        const int x0 = ax.i0[x] * 3, x1 = ax.i1[x] * 3;
        const float wx0 = ax.w0[x], wx1 = ax.w1[x];
        for (int c = 0; c < 3; ++c) {
          const float left = static_cast<float>(r0[x0 + c]) * wy0 + static_cast<float>(r1[x0 + c]) * wy1;
          const float right = static_cast<float>(r0[x1 + c]) * wy0 + static_cast<float>(r1[x1 + c]) * wy1;
          planes[c][x] = left * wx0 + right * wx1;
        }
      }
    } else {
      // Rows first (every source column of this row pair, one vectorisable pass), then columns,
      // each product rounded on its own (this file is compiled with -ffp-contract=off): the order
      // numpy evaluates in model_export.preprocess.resize_bilinear.
      blend_rows(image + ay.i0[y] * row_stride, image + ay.i1[y] * row_stride, ay.w0[y], ay.w1[y],
                 vertical.data(), row_stride);
      // Columns: the three channels of a pixel in one 4-lane vector operation (the 4th lane is
      // padding, overwritten by the next pixel), then split into the channel planes.
      const float* v = vertical.data();
      float* px = interleaved.data();
      for (int x = 0; x < out_width; ++x) {
        F4 left, right;
        std::memcpy(&left, v + ax.i0[x] * 3, sizeof(F4));
        std::memcpy(&right, v + ax.i1[x] * 3, sizeof(F4));
        const F4 value = left * ax.w0[x] + right * ax.w1[x];
        std::memcpy(px + 3 * x, &value, sizeof(F4));
      }
      for (int x = 0; x < out_width; ++x) {
        planes[0][x] = px[3 * x];
        planes[1][x] = px[3 * x + 1];
        planes[2][x] = px[3 * x + 2];
      }
    }
    for (int c = 0; c < 3; ++c) {
      normalize_row(planes[c], out + c * plane + static_cast<size_t>(y) * out_width, out_width, mean[c], std[c]);
    }
  }
}

namespace {

// IoU in double, as model_export.postprocess.box_iou computes it from float32 boxes.
double iou(const float* a, const float* b) {
  const double ax1 = a[0], ay1 = a[1], ax2 = a[2], ay2 = a[3];
  const double bx1 = b[0], by1 = b[1], bx2 = b[2], by2 = b[3];
  const double w = std::max(std::min(ax2, bx2) - std::max(ax1, bx1), 0.0);
  const double h = std::max(std::min(ay2, by2) - std::max(ay1, by1), 0.0);
  const double inter = w * h;
  const double area_a = std::max(ax2 - ax1, 0.0) * std::max(ay2 - ay1, 0.0);
  const double area_b = std::max(bx2 - bx1, 0.0) * std::max(by2 - by1, 0.0);
  const double uni = area_a + area_b - inter;
  return uni > 0 ? inter / uni : 0.0;
}

}  // namespace

std::vector<Detection> postprocess(const float* boxes, const float* scores, const int64_t* classes, int64_t k,
                                   const PostprocessParams& params, int image_height, int image_width,
                                   const std::vector<std::string>& labels) {
  // numpy compares a float32 array with a Python float in float32 (NEP 50): so do we.
  const float threshold = static_cast<float>(params.score_threshold);
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    if (scores[i] >= threshold) order.push_back(i);
  }
  // Ties keep the earlier candidate, like np.argsort(-scores, kind="stable").
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });

  std::vector<int64_t> keep;
  std::vector<char> suppressed(order.size(), 0);
  for (size_t i = 0; i < order.size() && static_cast<int>(keep.size()) < params.max_detections; ++i) {
    if (suppressed[i]) continue;
    const int64_t bi = order[i];
    keep.push_back(bi);
    for (size_t j = i + 1; j < order.size(); ++j) {
      const int64_t bj = order[j];
      if (!suppressed[j] && classes[bj] == classes[bi] && iou(boxes + 4 * bi, boxes + 4 * bj) > params.nms_iou) {
        suppressed[j] = 1;
      }
    }
  }

  // The scale factors are double quotients rounded to float32, as in the numpy reference.
  const float sx = static_cast<float>(static_cast<double>(image_width) / params.input_width);
  const float sy = static_cast<float>(static_cast<double>(image_height) / params.input_height);
  const float scale[4] = {sx, sy, sx, sy};
  const float limit[4] = {static_cast<float>(image_width), static_cast<float>(image_height),
                          static_cast<float>(image_width), static_cast<float>(image_height)};
  std::vector<Detection> out;
  out.reserve(keep.size());
  for (int64_t i : keep) {
    Detection d;
    for (int c = 0; c < 4; ++c) {
      d.box[c] = std::min(std::max(boxes[4 * i + c] * scale[c], 0.0f), limit[c]);
    }
    d.score = scores[i];
    d.class_id = classes[i];
    d.label = (d.class_id >= 0 && d.class_id < static_cast<int64_t>(labels.size()))
                  ? labels[static_cast<size_t>(d.class_id)]
                  : std::to_string(d.class_id);
    out.push_back(std::move(d));
  }
  return out;
}

namespace {

bool is_dir(const std::string& p) {
  struct stat st{};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& p) {
  struct stat st{};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string parent_of(const std::string& p) {
  auto slash = p.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return p.substr(0, slash);
}

using Json = nlohmann::json;

const char* type_name(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "a boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float: return "a number";
    case Json::value_t::string: return "a string";
    case Json::value_t::array: return "an array";
    case Json::value_t::object: return "an object";
    default: return "not JSON";
  }
}

// model.json as nlohmann/json parsed it. Its lexer reads numbers with the locale's decimal point
// swapped in, so "0.5" is 0.5 whatever LC_NUMERIC the host program set (strtod alone would stop
// at the '.' under de_DE and read 0).
Json parse_manifest(const std::string& text, const std::string& file) {
  try {
    // Duplicate keys: the last one wins, as in Python's json module. No comments, strict UTF-8.
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    // what(): "[json.exception.parse_error.101] parse error at line 1, column 26: <the problem>".
    const std::string what = e.what();
    const size_t at = what.find("parse error");
    const std::string rest = at == std::string::npos ? ": " + what : what.substr(at + std::strlen("parse error"));
    throw Error(file + ": invalid JSON" + rest);
  }
}

class Manifest {
 public:
  Manifest(const Json& root, std::string file) : root_(root), file_(std::move(file)) {}

  const Json& get(const std::string& dotted, bool (Json::*is)() const noexcept, const char* what) const {
    const Json* v = lookup(dotted);
    if (!v) fail(dotted, "is missing");
    if (!(v->*is)()) fail(dotted, std::string("must be ") + what + ", not " + type_name(*v));
    return *v;
  }

  // nullptr when a key on the way is missing or names something that is not an object.
  const Json* lookup(const std::string& dotted) const {
    const Json* v = &root_;
    size_t start = 0;
    for (;;) {
      size_t dot = dotted.find('.', start);
      std::string key = dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (!v->is_object()) return nullptr;
      auto it = v->find(key);
      if (it == v->end()) return nullptr;
      v = &*it;
      if (dot == std::string::npos) return v;
      start = dot + 1;
    }
  }

  double number(const std::string& key) const {
    return get(key, &Json::is_number, "a number").get<double>();
  }

  int positive_int(const std::string& key) const {
    double d = number(key);
    if (d < 1 || d > 1 << 20 || d != std::floor(d)) fail(key, "must be a positive integer");
    return static_cast<int>(d);
  }

  std::string string_or(const std::string& key, const std::string& fallback) const {
    const Json* v = lookup(key);
    if (!v || v->is_null()) return fallback;
    if (!v->is_string()) fail(key, "must be a string");
    return v->get<std::string>();
  }

  std::array<float, 3> triple(const std::string& key) const {
    const Json& items = get(key, &Json::is_array, "an array");
    if (items.size() != 3) fail(key, "must hold 3 numbers, one per RGB channel");
    std::array<float, 3> out{};
    for (size_t i = 0; i < 3; ++i) {
      if (!items[i].is_number()) fail(key, "must hold numbers");
      out[i] = static_cast<float>(items[i].get<double>());
    }
    return out;
  }

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(file_ + ": " + key + " " + what);
  }

 private:
  const Json& root_;
  std::string file_;
};

}  // namespace

ModelInfo read_model_info(const std::string& model_path) {
  std::string dir, manifest_file;
  std::string torchscript_file;
  if (is_dir(model_path)) {
    dir = model_path;
  } else if (is_file(model_path)) {
    dir = parent_of(model_path);
    torchscript_file = model_path;
  } else {
    throw Error("model not found: " + model_path + " (expected an export folder with model.json, or its TorchScript file)");
  }
  manifest_file = dir + "/model.json";
  std::ifstream in(manifest_file, std::ios::binary);
  if (!in) throw Error("no model.json in " + dir + ": the runtime needs the export's manifest beside the TorchScript file");
  std::stringstream buf;
  buf << in.rdbuf();
  const Json root = parse_manifest(buf.str(), manifest_file);
  Manifest m(root, manifest_file);

  ModelInfo info;
  info.name = m.string_or("name", "");
  info.version = m.string_or("version", "");
  info.framework_version = m.string_or("framework_version", "");
  const std::string framework = m.string_or("framework", "pytorch");
  if (framework != "pytorch") m.fail("framework", "is '" + framework + "': the C++ runtime runs PyTorch exports only");
  const std::string format = m.string_or("output.format", "candidates");
  if (format != "candidates") {
    m.fail("output.format", "is '" + format + "': the C++ runtime expects a model returning top-K candidates");
  }
  const std::string resize = m.string_or("input.resize", "stretch");
  if (resize != "stretch") m.fail("input.resize", "is '" + resize + "': only 'stretch' is supported");
  const Json* channels = m.lookup("input.channels");
  if (channels && !(channels->is_number() && channels->get<double>() == 3)) {
    m.fail("input.channels", "must be 3: the runtime takes RGB images");
  }
  info.input_height = m.positive_int("input.height");
  info.input_width = m.positive_int("input.width");
  info.mean = m.triple("input.mean");
  info.std = m.triple("input.std");
  for (float s : info.std) {
    if (!(s > 0.0f)) m.fail("input.std", "must be positive");
  }
  for (const Json& label : m.get("labels", &Json::is_array, "an array")) {
    if (!label.is_string()) m.fail("labels", "must be a list of strings");
    info.labels.push_back(label.get<std::string>());
  }
  info.score_threshold = m.number("output.score_threshold");
  info.nms_iou = m.number("output.nms_iou");
  info.max_detections = m.positive_int("output.max_detections");
  if (info.score_threshold < 0 || info.score_threshold > 1) m.fail("output.score_threshold", "must be in [0, 1]");
  if (!(info.nms_iou > 0) || info.nms_iou > 1) m.fail("output.nms_iou", "must be in (0, 1]");

  if (torchscript_file.empty()) {
    std::string rel = m.string_or("files.torchscript.path", m.string_or("exporters.torchscript.file", "model.torchscript.pt"));
    if (rel.empty() || rel[0] == '/' || rel.find("..") != std::string::npos) {
      m.fail("files.torchscript.path", "must be a path inside the export folder");
    }
    torchscript_file = dir + "/" + rel;
  }
  if (!is_file(torchscript_file)) throw Error("TorchScript file not found: " + torchscript_file);
  info.torchscript_path = torchscript_file;
  return info;
}

}  // namespace slipway::detail
