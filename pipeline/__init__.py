"""Edge AI deployment pipeline: Keras model -> verified int8 model on a Coral Edge TPU or a TFLite Micro MCU.

Importing the package is cheap on purpose: TensorFlow, LiteRT and the TFLM interpreter are
imported inside the functions that need them, so `invoke --list` and `invoke check` start fast.
"""

__version__ = "0.1.0"
TOOL_NAME = "edge-deploy"
