# The vocabulary of the project. Each target sets up what it needs on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PG ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: venv packages browser nftables haproxy rsyslog run test bench chaos lint format trace clean lock dist

# The product and, beside it, the lab (lab/: benchmarks and chaos, `fleetcmd bench …`), both
# editable; the lab is its own distribution, never in the product's wheel.
$(STAMP): pyproject.toml lab/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]' -e lab
	touch $(STAMP)

venv: $(STAMP)

## run: the all-in-one system on the embedded store with a few local agents
run: venv
	$(BIN)/fleetcmd up

## packages: the Debian packages the tests drive for real, installed once where missing:
## Chromium (the dashboard's Playwright tests; no browser download), nftables (firewall-drop,
## in network namespaces the tests make), HAProxy (the multi-host topology, deploy/haproxy.cfg),
## rsyslog and its OpenSSL driver (the syslog collector event subscriptions deliver to)
HOST_PACKAGES := /usr/bin/chromium:chromium /usr/sbin/nft:nftables /usr/sbin/haproxy:haproxy \
	/usr/sbin/rsyslogd:rsyslog /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_ossl.so:rsyslog-openssl
packages:
	@missing=""; for p in $(HOST_PACKAGES); do test -e "$${p%%:*}" || missing="$$missing $${p##*:}"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing"; apt-get update && apt-get install -y $$missing; fi
browser nftables haproxy rsyslog: packages

## test: the whole suite, SQLite and PostgreSQL, on TEST_WORKERS processes (pytest-xdist;
## most tests wait on real processes, so two workers fill a 2-core machine)
TEST_WORKERS ?= 2
test: venv packages
	rm -f build/trace-results.json
	FLEETCMD_TEST_PG=$(PG) $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS)
	$(BIN)/python tools/trace.py $(TRACE_FLAGS)

## trace: the requirements traceability matrix (docs/traceability.md) from the last test run
trace: venv
	$(BIN)/python tools/trace.py $(TRACE_FLAGS)

## bench: the benchmarks of SPEC §7 on both stores (multi-node on PostgreSQL only); about
## 25 minutes. BENCH_FLAGS='--log-dir DIR' keeps the processes' logs.
bench: venv
	$(BIN)/fleetcmd bench fanout --agents 100000
	$(BIN)/fleetcmd bench fanout --agents 100000 --store $(PG)
	$(BIN)/fleetcmd bench delivery --agents 10000 $(BENCH_FLAGS)
	$(BIN)/fleetcmd bench delivery --agents 10000 --store $(PG) $(BENCH_FLAGS)
	$(BIN)/fleetcmd bench storm --agents 10000 $(BENCH_FLAGS)
	$(BIN)/fleetcmd bench storm --agents 10000 --store $(PG) $(BENCH_FLAGS)
	$(BIN)/fleetcmd bench latency --tasks 500 $(BENCH_FLAGS)
	$(BIN)/fleetcmd bench latency --tasks 500 --store $(PG) $(BENCH_FLAGS)
	$(BIN)/fleetcmd bench backlog --commands 1000000 --agents 100000 --tasks 500 $(BENCH_FLAGS)
	$(BIN)/fleetcmd bench backlog --commands 1000000 --agents 100000 --tasks 500 --store $(PG) $(BENCH_FLAGS)
	$(BIN)/fleetcmd bench footprint --idle 300 --changes 100 $(BENCH_FLAGS)
	$(BIN)/fleetcmd bench footprint --idle 300 --changes 100 --store $(PG) $(BENCH_FLAGS)
	$(BIN)/fleetcmd bench multinode --agents 2000 --tasks 5 --store $(PG) $(BENCH_FLAGS)

## chaos: fault injection (kills, stops, cuts, full disk, storms) then the invariants, both stores
CHAOS_MINUTES ?= 5
CHAOS_SEED ?= 1
chaos: venv
	$(BIN)/fleetcmd bench chaos --minutes $(CHAOS_MINUTES) --seed $(CHAOS_SEED)
	$(BIN)/fleetcmd bench chaos --minutes $(CHAOS_MINUTES) --seed $(CHAOS_SEED) --store $(PG)

## lint: ruff (lint and format), mypy and the import rules (import-linter, pyproject.toml)
lint: venv
	$(BIN)/ruff check src lab tests tools
	$(BIN)/ruff format --check src lab tests tools
	$(BIN)/mypy
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff check --fix src lab tests
	$(BIN)/ruff format src lab tests

## dist: the product's wheel and sdist in dist/ (the lab is not in them)
dist: venv
	$(BIN)/python -m build --outdir dist .

## lock: refresh the constraints file from the current virtualenv
lock: venv
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^fleetcmd' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist
