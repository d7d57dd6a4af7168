"""Triton kernels, one module per op, named like their twins in ``bertfast.ops``.

Importing this package never touches a GPU driver; kernels compile on first launch.
"""
