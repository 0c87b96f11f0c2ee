# Two entry points: `make demo` (deploy to a throwaway local systemd host) and `make test`.
# Both install what they need on a fresh Debian machine (run as root).

VENV ?= .venv
PYTHON ?= python3
STAMPS := .stamps
# systemd-nspawn test hosts (debootstrap tree, socat bridge, iproute2 for bridge networks),
# psycopg2's build, ssh client.
APT_PACKAGES := systemd-container debootstrap socat zstd openssh-client iproute2 libpq-dev gcc \
	nginx-light python3-venv

.PHONY: test deps demo clean-cache

test: deps
	$(VENV)/bin/pytest

demo: deps
	$(VENV)/bin/python -m tests.support.demo

# Our deploy vs one pyinfra operation per file, 13 / 130 / 1,000 workers at 24 ms RTT, on
# throwaway test hosts, one homeserver on 8 machines x 130, then a full restart under client load,
# rolling vs all-at-once; prints two markdown tables (about 26 + 15 minutes before the cluster
# rows, which add ~4 (3 runs) or ~1.5 (--quick); BENCH_ARGS=--quick: ~8 before them;
# "--restarts-only --quick": ~5; "--cluster-only --quick": ~2).
.PHONY: bench
bench: deps
	$(VENV)/bin/python -m tests.bench.run $(BENCH_ARGS)

deps: $(STAMPS)/apt $(STAMPS)/venv

$(STAMPS)/apt:
	mkdir -p $(STAMPS)
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES)
	touch $@

$(STAMPS)/venv: pyproject.toml
	mkdir -p $(STAMPS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@
