"""Adapters: the only code that talks to Kafka, Redis and HTTP services.

Protocol and domain code never imports from here; entry points wire adapters to it.
"""
