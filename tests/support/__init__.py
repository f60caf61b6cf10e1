"""What the tests and the benchmarks share: process launchers, free ports, a real etcd, the backends
the suites run, and the tiny model's HF reference. Nothing here is a test; test modules and
benchmark scripts import this package and never each other."""
