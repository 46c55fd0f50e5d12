"""Foresight: the shared kernel of the gateway, the predictor and the replicas.

Only light, dependency-free pieces live here (CLI, config, errors, block hashing) so that every
component can import them without pulling in torch.
"""

__version__ = "0.1.0"
