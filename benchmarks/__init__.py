"""crpo-ray benchmarks: every figure is a ratio measured in one run (see README.md)."""
