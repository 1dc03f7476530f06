"""The content manager and the signed CTI feed it polls (SPEC §1; rows 4, 7, 8, 9, 10, 12)."""
