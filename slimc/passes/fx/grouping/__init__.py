"""Helpers of the `group-conv` pass: consistent channel permutations and balanced co-clustering."""

from .partition import balanced_assign, cocluster
from .permute import apply_permutation, permutable_groups, permutation_indices

__all__ = ["apply_permutation", "balanced_assign", "cocluster", "permutable_groups", "permutation_indices"]
