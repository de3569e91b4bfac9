"""Benchmarks (`make bench`): ingress, worker, peer, e2e and ceiling; see docs/performance.md."""
