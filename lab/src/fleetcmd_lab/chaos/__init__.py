"""Fault injection: break the running system on purpose, then check that nothing was lost and
nothing was done twice (`fleetcmd bench chaos`, `make chaos`, tests/chaos).

- `proxy`: a loopback TCP proxy that passes, delays, drops or blackholes connections;
- `simagents`: simulated agents over the real Comms API that record every execution;
- `cluster`: the whole system as real processes, each restartable, wired through proxies;
- `faults`: the fault kinds and the seeded injector;
- `invariants`: what must hold at the end of every run;
- `runner`: the scenario (workload + faults + drain + checks) for one seed.
"""
