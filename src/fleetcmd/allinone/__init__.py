"""`fleetcmd up`: every role as a real local process, supervised together."""
