// Pre- and postprocessing of the detection contract (docs/architecture.md), without libtorch:
// the same arithmetic, in the same order and precision, as model_export/preprocess.py and
// model_export/postprocess.py, so that the C++ runtime and the Python reference agree bit for bit.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "slipway/detector.hpp"

namespace slipway::detail {

// uint8 RGB HWC [height, width, 3] -> float32 CHW [3, out_height, out_width] written to `out`:
// bilinear resize with half-pixel centres and no antialias, then (x / 255 - mean) / std.
void resize_normalize(const uint8_t* image, int height, int width, int out_height, int out_width,
                      const std::array<float, 3>& mean, const std::array<float, 3>& std, float* out);

struct PostprocessParams {
  double score_threshold = 0.3;
  double nms_iou = 0.5;
  int max_detections = 50;
  int input_height = 0;
  int input_width = 0;
};

// Candidates of one image (boxes [k, 4] in model-input pixels, scores [k], classes [k]) ->
// detections in the pixels of an image_height x image_width original, best first.
std::vector<Detection> postprocess(const float* boxes, const float* scores, const int64_t* classes, int64_t k,
                                   const PostprocessParams& params, int image_height, int image_width,
                                   const std::vector<std::string>& labels);

// Reads and checks model.json; model_path is the export folder or the TorchScript file in it.
ModelInfo read_model_info(const std::string& model_path);

}  // namespace slipway::detail
