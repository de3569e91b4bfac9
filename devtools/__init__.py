"""Development tooling, apart from production: the sandbox payment platform (`sandbox/`), the
local Kafka and Redis stack (`stack/`) and the demo (`demo/`).

Production packages (`ingress`, `workers`, `shared`) never import this package (a test checks
the import graph); the production image does not contain it. The `paynotify` command reaches
`stack`, `sandbox` and `demo` by name only when one of them runs, and says so when this package
is not installed.
"""
