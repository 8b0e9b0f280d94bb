// The Python module slipway_runtime._core: a thin layer over slipway::Detector.
// Images come in as numpy uint8 [H, W, 3] C-contiguous arrays (the Python wrapper converts and
// checks); the GIL is released for the whole of preprocess + forward + postprocess.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "slipway/detector.hpp"
#include "../src/image_ops.hpp"

namespace py = pybind11;

namespace {

using Image = py::array_t<uint8_t, py::array::c_style>;

void check_image(const Image& image) {
  if (image.ndim() != 3 || image.shape(2) != 3) {
    throw py::value_error("expected a uint8 RGB image [H, W, 3]");
  }
  if (image.shape(0) < 1 || image.shape(1) < 1 || image.shape(0) > INT32_MAX || image.shape(1) > INT32_MAX) {
    throw py::value_error("image height and width must be between 1 and 2**31 - 1");
  }
}

py::dict timings_dict(const slipway::Timings& t) {
  py::dict d;
  d["preprocess_ms"] = t.preprocess_ms;
  d["inference_ms"] = t.inference_ms;
  d["postprocess_ms"] = t.postprocess_ms;
  d["total_ms"] = t.total_ms;
  return d;
}

// Detections as numpy arrays (boxes [N, 4] float32, scores [N] float32, classes [N] int64) and labels.
py::tuple detections_tuple(const std::vector<slipway::Detection>& dets) {
  const auto n = static_cast<py::ssize_t>(dets.size());
  py::array_t<float> boxes({n, static_cast<py::ssize_t>(4)});
  py::array_t<float> scores(n);
  py::array_t<int64_t> classes(n);
  py::list labels;
  auto b = boxes.mutable_unchecked<2>();
  auto s = scores.mutable_unchecked<1>();
  auto c = classes.mutable_unchecked<1>();
  for (py::ssize_t i = 0; i < n; ++i) {
    for (py::ssize_t j = 0; j < 4; ++j) b(i, j) = dets[i].box[j];
    s(i) = dets[i].score;
    c(i) = dets[i].class_id;
    labels.append(dets[i].label);
  }
  return py::make_tuple(boxes, scores, classes, labels);
}

py::dict info_dict(const slipway::ModelInfo& m) {
  py::dict d;
  d["name"] = m.name;
  d["version"] = m.version;
  d["framework_version"] = m.framework_version;
  d["input_height"] = m.input_height;
  d["input_width"] = m.input_width;
  d["mean"] = std::vector<float>(m.mean.begin(), m.mean.end());
  d["std"] = std::vector<float>(m.std.begin(), m.std.end());
  d["labels"] = m.labels;
  d["score_threshold"] = m.score_threshold;
  d["nms_iou"] = m.nms_iou;
  d["max_detections"] = m.max_detections;
  d["torchscript_path"] = m.torchscript_path;
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "slipway C++ inference runtime (libtorch) - use slipway_runtime.Detector";
  py::register_exception<slipway::Error>(m, "Error", PyExc_RuntimeError);

  py::class_<slipway::Detector>(m, "Detector")
      .def(py::init([](const std::string& model, int threads, int interop_threads, int warmup_runs, bool onednn_fusion) {
             slipway::Options o;
             o.threads = threads;
             o.interop_threads = interop_threads;
             o.warmup_runs = warmup_runs;
             o.onednn_fusion = onednn_fusion;
             // Loading compiles TorchScript and runs warm-up passes: no Python needed meanwhile.
             py::gil_scoped_release release;
             return std::make_unique<slipway::Detector>(model, o);
           }),
           py::arg("model"), py::arg("threads") = 2, py::arg("interop_threads") = 0, py::arg("warmup_runs") = 3,
           py::arg("onednn_fusion") = true)
      .def(
          "predict",
          [](const slipway::Detector& d, const py::buffer& image, int height, int width) {
            // Any C-contiguous uint8 buffer of height * width * 3 RGB bytes: a numpy array, bytes
            // (PIL's tobytes()), a memoryview. Read in place, without numpy.
            const py::buffer_info buf = image.request();
            if (buf.itemsize != 1 || (buf.format != "B" && buf.format != "b" && buf.format != "c")) {
              throw py::value_error("expected uint8 RGB pixels, got a buffer of format '" + buf.format + "'");
            }
            py::ssize_t expected = 1;
            for (py::ssize_t i = buf.ndim - 1; i >= 0; --i) {
              if (buf.strides[i] != expected) throw py::value_error("the image buffer must be C-contiguous");
              expected *= buf.shape[i];
            }
            if (height < 1 || width < 1) throw py::value_error("image height and width must be at least 1");
            if (buf.size != static_cast<py::ssize_t>(height) * width * 3) {
              throw py::value_error("the buffer holds " + std::to_string(buf.size) + " bytes, not height " +
                                    std::to_string(height) + " x width " + std::to_string(width) + " x 3");
            }
            slipway::Timings t;
            std::vector<slipway::Detection> dets;
            {
              py::gil_scoped_release release;
              dets = d.predict(static_cast<const uint8_t*>(buf.ptr), height, width, &t);
            }
            // Straight to the contract's dicts: no numpy arrays in between (they cost more than the
            // C++ pre- and postprocessing of a small image).
            py::list out(dets.size());
            for (size_t i = 0; i < dets.size(); ++i) {
              const auto& det = dets[i];
              py::dict item;
              py::list box(4);
              for (size_t j = 0; j < 4; ++j) box[j] = det.box[j];
              item["box"] = std::move(box);
              item["score"] = det.score;
              item["class_id"] = det.class_id;
              item["label"] = det.label;
              out[i] = std::move(item);
            }
            return py::make_tuple(std::move(out), timings_dict(t));
          },
          py::arg("image"), py::arg("height"), py::arg("width"),
          "([{box, score, class_id, label}, ...], timings in ms) for height x width x 3 uint8 RGB bytes")
      .def(
          "predict_arrays",
          [](const slipway::Detector& d, const Image& image) {
            check_image(image);
            slipway::Timings t;
            std::vector<slipway::Detection> dets;
            {
              py::gil_scoped_release release;
              dets = d.predict(image.data(), static_cast<int>(image.shape(0)), static_cast<int>(image.shape(1)), &t);
            }
            py::tuple arrays = detections_tuple(dets);
            return py::make_tuple(arrays[0], arrays[1], arrays[2], arrays[3], timings_dict(t));
          },
          py::arg("image"),
          "(boxes [N, 4] float32, scores [N] float32, classes [N] int64, labels, timings in ms)")
      .def(
          "preprocess",
          [](const slipway::Detector& d, const Image& image) {
            check_image(image);
            const auto& info = d.info();
            std::vector<float> v;
            {
              py::gil_scoped_release release;
              v = d.preprocess(image.data(), static_cast<int>(image.shape(0)), static_cast<int>(image.shape(1)));
            }
            py::array_t<float> out({1, 3, info.input_height, info.input_width});
            std::copy(v.begin(), v.end(), out.mutable_data());
            return out;
          },
          py::arg("image"), "The model input predict() builds: float32 [1, 3, H, W]")
      .def_property("threads", &slipway::Detector::threads, &slipway::Detector::set_threads)
      .def_property_readonly("fusion_groups", &slipway::Detector::fusion_groups)
      .def_property_readonly("fusion_error", &slipway::Detector::fusion_error)
      .def_property_readonly("info", [](const slipway::Detector& d) { return info_dict(d.info()); });

  // The C++ postprocessing alone, so tests can hold it against model_export.postprocess.
  m.def(
      "_postprocess",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> boxes,
         py::array_t<float, py::array::c_style | py::array::forcecast> scores,
         py::array_t<int64_t, py::array::c_style | py::array::forcecast> classes, std::pair<int, int> input_size,
         std::pair<int, int> image_size, double score_threshold, double nms_iou, int max_detections,
         std::vector<std::string> labels) {
        const auto k = scores.size();
        if (boxes.size() != 4 * k || classes.size() != k) throw py::value_error("boxes [K, 4], scores [K], classes [K]");
        slipway::detail::PostprocessParams p;
        p.score_threshold = score_threshold;
        p.nms_iou = nms_iou;
        p.max_detections = max_detections;
        p.input_height = input_size.first;
        p.input_width = input_size.second;
        auto dets = slipway::detail::postprocess(boxes.data(), scores.data(), classes.data(), k, p, image_size.first,
                                                 image_size.second, labels);
        return detections_tuple(dets);
      },
      py::arg("boxes"), py::arg("scores"), py::arg("classes"), py::arg("input_size"), py::arg("image_size"),
      py::arg("score_threshold"), py::arg("nms_iou"), py::arg("max_detections"), py::arg("labels"));

  m.attr("version") = slipway::version();
  m.attr("torch_version") = slipway::torch_version();
}
