"""Samplers: the book's narrowing random search, and every sampler by name.

This package knows nothing about the model (it never imports :mod:`hpo.nn`).
"""

from hpo.samplers.edges import edge_warnings
from hpo.samplers.narrowing import NarrowingSampler
from hpo.samplers.registry import SAMPLER_NAMES, available_samplers, make_sampler

__all__ = [
    "SAMPLER_NAMES",
    "NarrowingSampler",
    "available_samplers",
    "edge_warnings",
    "make_sampler",
]
