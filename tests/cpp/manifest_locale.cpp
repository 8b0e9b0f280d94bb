// Reads a model.json through the runtime's manifest reader after switching the C locale, and
// prints what it read as one JSON line. Built from the torch-free runtime sources by
// tests/test_native.py (test_manifest_numbers_ignore_the_host_locale).
//
//   manifest_locale LOCALE MODEL_DIR
//
// A C library number parser (strtod, sscanf) follows LC_NUMERIC: under de_DE.UTF-8 it stops
// at the '.' of "0.5" and reads 0. The line also says what strtod makes of "0.5" under the
// locale, so the test knows the locale really took effect.
#include <clocale>
#include <cstdlib>
#include <iostream>
#include <locale>
#include <sstream>

#include "image_ops.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: manifest_locale LOCALE MODEL_DIR\n";
    return 2;
  }
  if (!std::setlocale(LC_ALL, argv[1])) {
    std::cerr << "setlocale(LC_ALL, \"" << argv[1] << "\") failed\n";
    return 3;
  }
  // iostreams format with the C++ global locale (still "C"), so the numbers below print with '.'.
  std::ostringstream out;
  out.imbue(std::locale::classic());
  out.precision(17);
  out << "{\"locale\": \"" << std::setlocale(LC_NUMERIC, nullptr) << "\", \"decimal_point\": \""
      << std::localeconv()->decimal_point << "\", \"strtod_0_5\": " << std::strtod("0.5", nullptr);
  try {
    slipway::ModelInfo info = slipway::detail::read_model_info(argv[2]);
    out << ", \"score_threshold\": " << info.score_threshold << ", \"nms_iou\": " << info.nms_iou
        << ", \"mean\": [" << info.mean[0] << ", " << info.mean[1] << ", " << info.mean[2] << "]"
        << ", \"std\": [" << info.std[0] << ", " << info.std[1] << ", " << info.std[2] << "]"
        << ", \"max_detections\": " << info.max_detections << ", \"error\": null}";
  } catch (const std::exception& e) {
    // Printed inside a JSON string: quotes, backslashes, control and non-ASCII bytes (the
    // message may quote the bad bytes of the file) become spaces.
    std::string msg = e.what();
    for (char& c : msg) {
      const auto u = static_cast<unsigned char>(c);
      if (c == '"' || c == '\\' || u < 0x20 || u >= 0x80) c = ' ';
    }
    out << ", \"error\": \"" << msg << "\"}";
  }
  std::cout << out.str() << std::endl;
  return 0;
}
