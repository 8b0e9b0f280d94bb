// detect: run one image through a Slipway export with the C++ runtime and print the detections.
//
//   detect <model folder or model.torchscript.pt> <image.ppm> [threads]
//
// Reads binary PPM (P6, 8-bit RGB): the runtime takes raw RGB pixels, and a PPM is exactly that
// with a short text header, so the example needs no image library. Convert other formats with
// e.g. `python -c "from PIL import Image; Image.open('a.png').convert('RGB').save('a.ppm')"`.
#include <slipway/detector.hpp>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace {

struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
};

// Next header token of a PPM, skipping whitespace and '#' comments.
std::string ppm_token(std::istream& in) {
  std::string token;
  char c;
  while (in.get(c)) {
    if (c == '#') {
      std::string comment;
      std::getline(in, comment);
    } else if (std::isspace(static_cast<unsigned char>(c))) {
      if (!token.empty()) return token;
    } else {
      token += c;
    }
  }
  return token;
}

Image read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  if (ppm_token(in) != "P6") throw std::runtime_error(path + ": not a binary PPM (P6)");
  Image img;
  img.width = std::stoi(ppm_token(in));
  img.height = std::stoi(ppm_token(in));
  const int maxval = std::stoi(ppm_token(in));
  if (img.width < 1 || img.height < 1 || maxval != 255) {
    throw std::runtime_error(path + ": need an 8-bit PPM with a positive size");
  }
  img.rgb.resize(static_cast<size_t>(img.width) * img.height * 3);
  in.read(reinterpret_cast<char*>(img.rgb.data()), static_cast<std::streamsize>(img.rgb.size()));
  if (in.gcount() != static_cast<std::streamsize>(img.rgb.size())) throw std::runtime_error(path + ": truncated");
  return img;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::cerr << "usage: " << argv[0] << " <model folder or model.torchscript.pt> <image.ppm> [threads]\n";
    return 2;
  }
  try {
    slipway::Options options;
    if (argc == 4) options.threads = std::atoi(argv[3]);
    slipway::Detector detector(argv[1], options);
    const Image img = read_ppm(argv[2]);
    slipway::Timings t;
    const auto detections = detector.predict(img.rgb.data(), img.height, img.width, &t);
    const auto& info = detector.info();
    std::printf("model %s %s (slipway runtime %s, libtorch %s), image %dx%d, %zu detections\n", info.name.c_str(),
                info.version.c_str(), slipway::version().c_str(), slipway::torch_version().c_str(), img.width,
                img.height, detections.size());
    for (const auto& d : detections) {
      std::printf("%-10s %.6f  [%.3f, %.3f, %.3f, %.3f]  class %lld\n", d.label.c_str(), d.score, d.box[0], d.box[1],
                  d.box[2], d.box[3], static_cast<long long>(d.class_id));
    }
    std::printf("timing ms: preprocess %.3f inference %.3f postprocess %.3f total %.3f\n", t.preprocess_ms,
                t.inference_ms, t.postprocess_ms, t.total_ms);
  } catch (const std::exception& e) {
    std::cerr << "detect: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
