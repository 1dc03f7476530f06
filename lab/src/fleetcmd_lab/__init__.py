"""The lab: benchmarks (`bench`) and fault injection (`chaos`) for fleetcmd.

A distribution of its own (`fleetcmd-lab`, this folder's pyproject.toml), never in the product's
wheel. It may import anything from `fleetcmd`; `fleetcmd` never imports it (import-linter). Its
processes are started with the product's launcher (`fleetcmd.launch`), like `fleetcmd up`."""
