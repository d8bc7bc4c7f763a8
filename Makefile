# Two commands matter: `make run` and `make test`. Both install into .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean bench browser postgres mutation evidence evidence-table

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The main job, on the MNIST test split embedded in the package (works offline).
run: $(STAMP)
	$(BIN)/dltricks run

# The report test renders HTML in headless Chromium and the serve test drives it with chromedriver (Debian's
# packages chromium and chromium-driver); install them when we can.
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq >/dev/null 2>&1; \
	    apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1) || \
	    echo "note: chromium/chromium-driver not installed; the browser tests will be skipped"; }

# The search scale-out test starts a real PostgreSQL server (Debian's package; initdb in a temporary folder).
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq >/dev/null 2>&1; apt-get install -y -qq postgresql >/dev/null 2>&1) || \
	    echo "note: postgresql not installed; the PostgreSQL search test will be skipped"; }

test: $(STAMP) browser postgres lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

# Lint (ruff, configured in pyproject.toml): style errors, unused or undefined names, complexity over 15.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# The stored evidence base (src/dltricks/tips/evidence_base/): `evidence` runs full mode for the CPU tips and stores
# the results (tips marked gpu= are skipped on a CPU; the two dates tips in optim.* take about an hour of it; TIPS=...
# picks others); `evidence-table` regenerates docs/evidence.md's table.
EVIDENCE_TIPS ?= conv.*,norm.*,reg.*,optim.*,arch.*,seg.aspp-degeneration,seg.skip-connections,learn.*
evidence: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/dltricks verify --full --only "$(if $(TIPS),$(TIPS),$(EVIDENCE_TIPS))" --store --out report-full
	$(BIN)/python -m dltricks.tips.stored --write docs/evidence.md

evidence-table: $(STAMP)
	$(BIN)/python -m dltricks.tips.stored --write docs/evidence.md

# Mutation testing of the core modules (mutmut; tests/mutation.py, docs/testing.md). Not part of `make test`:
# hours for all of them on 2 cores; MODULE=src/dltricks/utils/io.py runs one (minutes).
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[mutation]"
	$(BIN)/python tests/mutation.py $(MODULE)

bench: $(STAMP)
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache report runs .cache
