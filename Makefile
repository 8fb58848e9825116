# vault: the two quick-start commands are `make demo` and `make test`.
# Both install what they need: a virtual environment with vault, SoftHSM2,
# and the development tokens (softhsm/setup.sh); `make test` also installs
# NSS softoken, the second module (nss/setup.sh), and headless Chromium, which
# renders the printable transcripts in a test; the TPM tests (tests/tpm) run
# tpm/setup.sh themselves on a folder of their own (it installs swtpm and
# tpm2-pkcs11 when missing) and stop what it started when they end.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup tokens nss tpm browser clean-tokens lint lock clean

setup: $(VENV)/.installed tokens

# Installs the versions requirements.lock pins (with their hashes), then vault itself.
$(VENV)/.installed: pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "vault needs Python 3.11 or newer ($(PYTHON) is older)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "installing python3-venv"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
	    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }; \
	  $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

tokens:
	@bash softhsm/setup.sh --quiet

# NSS softoken, the second module the tests run on (tests/nss): installs NSS and makes its tokens in .nss/.
nss:
	@bash nss/setup.sh --quiet

# tpm2-pkcs11 on a software TPM (swtpm), for the officer/approver/release-signer steps (tests/tpm):
# installs them and starts swtpm, a private D-Bus and tpm2-abrmd for the tokens in .tpm/
# (for trying vault on a TPM by hand; `bash tpm/setup.sh --stop` ends them).
tpm:
	@bash tpm/setup.sh --quiet

# Headless Chromium (Debian's package) for the transcript print test.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing headless Chromium (apt-get install chromium) for the transcript print test"; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium >/dev/null 2>&1 \
	    || { $$sudo apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium >/dev/null; } \
	    || { echo "could not install chromium: install it with your package manager" >&2; exit 1; }; }

# Remove the development tokens in .softhsm/ and make them again (new keys, new PINs).
clean-tokens:
	@bash softhsm/setup.sh --reset

demo: setup
	@PATH="$(CURDIR)/$(BIN):$$PATH" bash docs/demo.sh

test: setup nss browser
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check vault tests
	$(BIN)/mypy

# Refresh the pinned versions (after a change to the dependencies in pyproject.toml, or to take
# newer releases): requirements.lock for the demo and CI (every extra), requirements-station.lock for a station.
LOCK := $(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 --generate-hashes \
  --custom-compile-command "make lock"
lock: $(VENV)/.installed
	$(BIN)/pip install -q --disable-pip-version-check uv
	$(LOCK) --upgrade --extra cli --extra test --extra esp32 --extra console -o requirements.lock
	$(LOCK) --upgrade -o requirements-station.lock

clean:
	rm -rf $(VENV) .demo
