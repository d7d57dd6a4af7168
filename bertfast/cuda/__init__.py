"""CUDA C++ kernels (csrc/), one module per op, named like their twins in ``bertfast.ops``.

Each module's ``launch`` allocates outputs with torch and calls the compiled extension
``bertfast._cuda`` with raw pointers, strides and the current stream; ``bertfast.ops`` checks
the inputs first. Importing this package needs neither the extension nor a GPU; a launch
says how to build the extension when it is missing.
"""
