"""What ``python -m ssl_dr.report`` computes from a sweep: per-job facts and the statistics of its tables."""
