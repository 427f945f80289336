"""Edge AI deployment pipeline: Keras model -> verified int8 model on a Coral Edge TPU or a TFLite Micro MCU.

Importing the package is cheap on purpose: TensorFlow, LiteRT and the TFLM interpreter are
imported inside the functions that need them, so `invoke --list` and `invoke check` start fast.
"""

from pathlib import Path

__version__ = "0.1.0"
TOOL_NAME = "edge-deploy"
PACKAGE_DIR = Path(__file__).resolve().parent
# templates/ and firmware/ live beside the package (editable install: the checkout); workers
# started as `python -m pipeline.runtime...` run from here so they import this same package.
PROJECT_DIR = PACKAGE_DIR.parent
