"""The process layer: the controller (one per server) that binds the listening sockets, forks and
supervises worker processes and reloads them gracefully (``controller``: the loop, the signal
table, generations), how it stops them (``shutdown``), when it recycles them (``recycle``) and
what other components plug into it with (``components``); the worker process's life around its
server; the sockets; the code reloader; and the daemon chores (pid file, daemonize, privilege drop,
sd_notify).

Layer: above ``spawning.config`` and ``spawning.server`` (a worker runs one); below the status
service, the factories and the command line.
"""
