"""recsys: Beam datasets, TFRS two-tower and MF models, ScaNN serving, offline A/B evaluation."""
import os

# TFRS 0.7.7 needs Keras 2: this must be set before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter is noise for a CLI user; real errors still surface as exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
