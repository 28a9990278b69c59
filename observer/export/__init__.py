"""Usage sent to a billing system exactly once (`observer export`).

- `planner`: pure: usage and the ledger in, the events to send out (new ones, corrections)
- `settings`: the export's settings (environment and a TOML file), read once at the edge
- `collect`: the usage of finalized periods, from the store
- `sending`: pending events sent with retries, answers written to the ledger
- `http_target`, `stripe_target`, `openmeter_target`: one module per billing system
- `job`: one run: collect, plan, record, send; and what it prints
"""
