# MailFlow Relay: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MAILMAN_VENV  ?= .venv-mailman
MAILMAN_STAMP := $(MAILMAN_VENV)/.installed

.PHONY: run test lint bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: install, initialise ./var with the example list, start the relay (stdout egress)
run: $(STAMP)
	$(BIN)/mailflow init --example
	$(BIN)/mailflow serve

## test: install and run the whole suite (SQLite and PostgreSQL), test files spread over
## two worker processes (pytest-xdist; each file stays in one worker, for its module fixtures);
## PYTEST_ARGS='-n 0' runs it in one process
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

## lint: ruff, mypy (strict), the layer contracts (import-linter) and dead code (vulture)
VULTURE_IGNORE := dotenv_settings,file_secret_settings,signum,frame
lint: $(STAMP)
	$(BIN)/ruff check mailflow tests bench vulture_whitelist.py
	$(BIN)/mypy
	$(BIN)/lint-imports
	@echo "vulture: unused code in mailflow/ (framework hooks are in vulture_whitelist.py)"
	@! $(BIN)/vulture mailflow tests bench vulture_whitelist.py \
	    --exclude mailflow/store/migrations/versions,bench/out --ignore-names $(VULTURE_IGNORE) \
	  | grep '^mailflow/'

## bench: ingest, fan-out and latency scenarios; writes bench/RESULTS.md
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## bench-peers: scenarios A, B, C, E, F against MailFlow, a private Postfix and GNU Mailman 3, side by side
.PHONY: bench-peers mailman-venv
bench-peers: $(STAMP) $(MAILMAN_STAMP)
	$(BIN)/python -m bench.peers $(BENCH_ARGS)

## bench-compare: scenarios A, B, C, E, F on today's code (--baseline, default 9f89b2a, in its own
## virtualenv under bench/out/compare/) and the working tree, interleaved run after run (issue 9)
.PHONY: bench-compare
bench-compare: $(STAMP)
	$(BIN)/python -m bench.compare $(BENCH_ARGS)

## bench-memory: twenty different 20-25 MB messages through a relay: peak and idle RSS (issue 10)
.PHONY: bench-memory bench-retention
bench-memory: $(STAMP)
	$(BIN)/python -m bench.memory --machine $(BENCH_ARGS)

## bench-ses: SMTP -> relay -> Amazon SES (moto in server mode) next to SMTP -> relay -> sink,
## msgs/s and the relay's CPU per message (issue 13)
.PHONY: bench-ses
bench-ses: $(STAMP)
	$(BIN)/python -m bench.ses $(BENCH_ARGS)

## mailman-venv: GNU Mailman 3 from PyPI in its own virtualenv (.venv-mailman), for bench-peers
mailman-venv: $(MAILMAN_STAMP)

$(MAILMAN_STAMP): bench/mailman-requirements.txt
	test -x $(MAILMAN_VENV)/bin/python || $(PYTHON) -m venv $(MAILMAN_VENV)
	$(MAILMAN_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r bench/mailman-requirements.txt
	touch $(MAILMAN_STAMP)

clean:
	rm -rf $(VENV) $(MAILMAN_VENV) var .pytest_cache .ruff_cache *.egg-info

## bench-roles: B and E with one ingress and 1 or 2 workers on PostgreSQL, blobs on a shared folder
## and on S3 (moto); the store's claim rounds per second (issue 15)
.PHONY: bench-roles
bench-roles: $(STAMP)
	$(BIN)/python -m bench.roles $(BENCH_ARGS)

## bench-retention: two minutes of A's load with a 10 s message_retention: does the SQLite file stay bounded? (issue 15)
bench-retention: $(STAMP)
	$(BIN)/python -m bench.retention --seconds 120 --retention 10 $(BENCH_ARGS)
