"""refcompress: neural-network compression you can read and trust.

NumPy reference implementations of pruning, quantization, knowledge distillation and
low-rank decomposition, with C kernels (cffi) for the hot paths held bit-exact or within a
derived tolerance against the reference by property tests.
"""

__version__ = "0.1.0"
