"""The indexer role: the store, the task manager, the commands stream and the command manager."""
