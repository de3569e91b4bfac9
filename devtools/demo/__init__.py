"""`make run`: the whole pipeline on this machine, paying a few thousand orders with realistic mess.

- `plan`: which orders, pay types, amounts and sandbox scenarios (pure, seeded);
- `report`: the summary from what was observed, its checks and its table (pure);
- `isolation`: a Redis database and consumer groups of the run's own, so runs never mix;
- `observe`: reading the sandbox's control API and the ingress's counters;
- `driver`: one run: start the processes, create and pay the orders, wait, collect, stop;
- `__main__`: the command line (`python -m devtools.demo`), the local stack, signals.
"""
