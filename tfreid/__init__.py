"""tfreid: video-based person re-identification in TensorFlow/Keras."""

__version__ = "0.1.0"
