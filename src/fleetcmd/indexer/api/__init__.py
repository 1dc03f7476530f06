"""The indexer's HTTP API, one module per resource."""
