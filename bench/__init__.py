"""The benchmark harness behind `make bench` (`manage.py bench`).

- `load`: the load generator, a separate lean process (standard library only):
  simulated browser users over the chat WebSocket, or streams read straight
  from the gateway emulator (the baseline).
- `fixtures`: users, sessions, conversations and long conversations in a bench
  database (run in a subprocess with the server's environment).
- `inproc`: in-process timings of long conversations (run in a subprocess).
- `procs`: subprocesses, free ports, /proc sampling.
- `runner`: the orchestration; `report`: table, JSON and plot; `profile`:
  py-spy's collapsed stacks summarised.
"""
