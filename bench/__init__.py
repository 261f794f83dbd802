"""kuberl benchmarks: `make bench` runs each module here (`python -m bench.NAME [--quick]`)."""
