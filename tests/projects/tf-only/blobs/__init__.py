"""A TensorFlow-only test project: a small Keras detector of discs and bars."""
