"""The active responses shipped with the agent.

Each file is a standalone script (standard library only, no fleetcmd imports): the agent copies
it into `STATE_DIR/active-response/bin/` with an interpreter line, and runs it from there like
any other response, through an argument vector.

- `firewall-drop` blocks an address with nftables (a table of its own, elements that expire);
- `disable-account` locks a local account (`usermod -L -e 1`, or `passwd -l`);
- `block-ip` only records an address in a deny list in the agent's own folder
  (`FLEETCMD_AR_LISTS`): a record for an operator or another tool, not a block.
"""
