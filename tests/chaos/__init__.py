"""The chaos run (issue 10, `make chaos`): the whole pipeline on a local stack of its own, messy
payments, and a seeded schedule of faults; the sandbox's ledger checked against the events topic.

`python -m tests.chaos -h` lists its options. Not part of the test tiers; the shortened run
(`--short`) is `tests/chaos/test_short_run.py` (marker `chaos`), run by `make chaos-short`.
"""
