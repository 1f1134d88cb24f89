import os

from hypothesis import HealthCheck, settings

# One profile for every property test: no deadline (the machine is shared and noisy), no
# example database in CI.  REFCOMPRESS_HYPOTHESIS_EXAMPLES raises the effort locally.
settings.register_profile(
    "refcompress",
    deadline=None,
    max_examples=int(os.environ.get("REFCOMPRESS_HYPOTHESIS_EXAMPLES", "60")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None if os.environ.get("CI") else settings.default.database,
)
settings.load_profile("refcompress")
