"""Kernels: the numpy reference of the canonical arithmetic and the fast backends."""
