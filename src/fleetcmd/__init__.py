"""fleetcmd: tasks in, commands out, every result recorded."""

__version__ = "0.1.0"
