"""ArBridge: a gRPC bridge that streams language-model text to AR apps."""

__version__ = "0.1.0"
