"""Room connections held in worker processes (`OBSERVER_ROOM_PROCESSES`).

One process joins rooms one at a time: joins that overlap in one rtc SDK multiply the
sockets each room keeps (measured: 3 per room joined alone, 6-28 with 2-8 joins at once),
and one join takes ~0.1 s. So a fleet's rooms are spread over several processes, each with
its own SDK, joining one room at a time. A worker only holds `RoomWatcher`s; the daemon
keeps everything else: tracker, database, webhooks, listings.

- `proto`: the messages between the daemon and a worker, one class each
- `channel`: how a message travels (length-prefixed frames on a pipe)
- `pool`: the daemon's side: the workers, and a stand-in for each room a worker holds
- `child`: the worker's side (`python -m observer.daemon.room_processes`)
"""
