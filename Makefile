# Build, test and package the dashboard-auth Chalice app.  GNU make.
#
#   make install    create $(VENV) if missing and install requirements-dev.txt (only when they changed),
#                   then this project, editable: the operator command $(VENV)/bin/dashboard-auth
#   make test       run the whole test suite (unit, integration, e2e, browser, slow) with pytest;
#                   tests/browser drives /usr/bin/chromium (apt-get install chromium; .ci/run does)
#   make demo       the whole system on this machine: local Secrets Manager, two demo clusters, the API
#                   and the login page on another origin (python -m demo; DEMO_ARGS="--api-port 9000")
#   make run        serve the API locally on http://127.0.0.1:$(PORT) (chalice local --stage local)
#   make package    chalice package --stage $(STAGE) into build/$(STAGE) (SAM template + deployment.zip),
#                   refused for a broken stage (scripts/package.py; ALLOW_PLACEHOLDERS=1 for CI's kind)
#   make lint-cfn   cfn-lint the packaged template, with the cfn-lint-serverless rules (as .ci/run)
#   make bench      run the benchmarks in bench/, if there are any
#   make clean      remove build output (not the venv, not the local key in .local/)
#
# No AWS credentials are needed for any of these. chalice wants a region even to package,
# so AWS_DEFAULT_REGION defaults to us-east-1 when it is not set.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON3 ?= python3
VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
CHALICE := $(VENV)/bin/chalice
PORT    ?= 8000
STAGE   ?= prod
BUILD   := build/$(STAGE)
PYTEST_ARGS ?=

export AWS_DEFAULT_REGION ?= us-east-1
# Keep pip from asking anything in CI and from nagging about its own version.
export PIP_DISABLE_PIP_VERSION_CHECK := 1

STAMP := $(VENV)/.installed

.PHONY: install test run demo package lint-cfn bench clean

install: $(STAMP)

# Re-installs only when a requirements file or pyproject.toml is newer than the last install.
# The project itself goes in last, editable and without dependencies (they are all pinned above),
# built by the pinned setuptools already in the venv: it adds the console script dashboard-auth.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PYTHON) || $(PYTHON3) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --requirement requirements-dev.txt
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation --editable .
	@touch $@

test: install
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# Runs from this directory whatever the caller's cwd (make -C works too). Without CLUSTERS_FILE
# the local stage uses the current kubeconfig context; without one, the server still starts and
# logins answer 503 explaining what to configure. The key is created in .local/key.json.
#
# The local settings are defaults given here, not in .chalice/config.json: `chalice local` applies
# a stage's environment_variables OVER the process environment, so anything there would beat the
# shell. Here the shell wins: `CSRF_ENFORCE=false make run`, `TOKEN_TTL=60 make run`,
# `LOG_LEVEL=DEBUG make run`, `CORS_ALLOWED_ORIGINS=http://localhost:3000 make run`,
# `KEY_SECRET_ID=... make run` (KEY_FILE is then unused). A malformed setting stops here with one
# sentence. --no-autoreload: the reloader restarted the server on every write of the key file or
# of bytecode, and ran the app in a thread whose start-up errors it printed and then ignored.
run: export KEY_FILE ?= .local/key.json
run: export TOKEN_TTL ?= 900
run: export CSRF_ENFORCE ?= true
run: export LOG_LEVEL ?= INFO
run: export CORS_ALLOWED_ORIGINS ?= http://localhost:8080
run: install
	@cd $(CURDIR) && $(PYTHON) scripts/check_settings.py
	cd $(CURDIR) && $(CHALICE) local --no-autoreload --stage local --port $(PORT)

# No AWS account, no cluster: see demo/__main__.py. Ctrl-C stops everything it started.
DEMO_ARGS ?=
demo: install
	cd $(CURDIR) && $(PYTHON) -m demo $(DEMO_ARGS)

# Only app.py and chalicelib/ are deployed: the deployed stages read chalicelib/clusters.json.
# scripts/package.py refuses (one sentence, no package) a stage without a valid registry there, with
# an invalid setting, or with example origins; ALLOW_PLACEHOLDERS=1 lets the placeholders through
# (a template-only build that cannot log anyone in, as CI makes).
ALLOW_PLACEHOLDERS ?=
package: install
	@# chalice zips chalicelib/ as it is: drop bytecode caches so the package is the same every time
	find chalicelib -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf $(BUILD)
	$(PYTHON) scripts/package.py $(STAGE) $(BUILD) $(if $(ALLOW_PLACEHOLDERS),--allow-placeholders)
	$(PYTHON) scripts/slim_package.py $(BUILD)/deployment.zip
	@ls -l $(BUILD)

lint-cfn: package
	$(VENV)/bin/cfn-lint --append-rules cfn_lint_serverless.rules --non-zero-exit-code warning -- $(BUILD)/sam.json

bench: install
	@if [ -d bench ]; then $(PYTHON) -m bench; else echo "no bench/ directory yet: nothing to run"; fi

clean:
	rm -rf build
