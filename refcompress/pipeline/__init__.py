"""refcompress.pipeline: composing the techniques, with metrics and the demo.

:mod:`~refcompress.pipeline.metrics` measures parameters, stored bytes, MACs, latency and
accuracy; :mod:`~refcompress.pipeline.demo` is the ``refcompress demo`` command.
"""

from .metrics import (accuracy, count_macs, count_parameters, measure_latency, register_mac_counter,
                      stored_bytes)

__all__ = ["accuracy", "count_macs", "count_parameters", "measure_latency", "register_mac_counter",
           "stored_bytes"]
