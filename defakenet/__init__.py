"""defakenet: deepfake face detection with a Keras-faithful ResNet50V2 on Ray."""

__version__ = "0.1.0"
