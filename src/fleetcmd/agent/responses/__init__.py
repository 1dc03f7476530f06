"""The active responses shipped with the agent (`block-ip`, `disable-account`).

Each file is a standalone script (standard library only, no fleetcmd imports): the agent copies
it into `STATE_DIR/active-response/bin/` with an interpreter line, and runs it from there like
any other response, through an argument vector. Both only edit lists in the folder the agent
names in `FLEETCMD_AR_LISTS` (its own state): they change nothing else on the host.
"""
