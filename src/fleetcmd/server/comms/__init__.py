"""The Comms API (agents ⇄ server), one module per endpoint group, as in docs/comms-api.md."""
