"""Shrink to a budget: search the plan's dimensions for the target that fits a limit on parameters, FLOPs or
latency and keeps the most of the source (``interprune shrink/plan SOURCE --budget ...``)."""

from .costs import LatencyCache, check_device, default_cache, measure_latency, static_costs
from .search import Candidate, SearchResult, output_error, search
from .spec import Budget, parse_budget

__all__ = ["Budget", "parse_budget", "search", "SearchResult", "Candidate", "output_error", "static_costs",
           "measure_latency", "LatencyCache", "check_device", "default_cache"]
