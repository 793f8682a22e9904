//! Load benchmarks of idem. The driver is `bench/run.py`; this crate holds the fast
//! static upstream it measures every target against (`bench-upstream`).
