"""The commands behind `observer COMMAND`, one module per kind (`observer.cli` maps names to
them and their errors to exit codes).

- `daemon`: `migrate`, `check`, `run`
- `process`: what `run` sets up around the daemon: open files, the run lock, signals
- `web`: `web`, the page on its own
- `reports`: `sessions`, `rooms`, `usage`, `reconcile`, `simulate`
- `store`: the database, opened for a command that reads it
- `parse`: times, limits and groupings as the options give them
"""
