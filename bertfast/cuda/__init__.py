"""CUDA C++ kernels (csrc/), one module per op, named like their twins in ``bertfast.ops``.

The launchers here validate inputs, allocate outputs with torch and call the compiled
extension ``bertfast._cuda`` with raw pointers, strides and the current stream. Importing this
package needs neither the extension nor a GPU; a launcher says how to build the extension
when it is missing.
"""
