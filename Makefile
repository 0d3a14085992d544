# Two commands do all set-up on a fresh machine (see README):
#   make demo   - create/reuse .venv, then run `semnb demo` on the embedded synthetic data
#   make test   - create/reuse .venv, then run the whole test suite (notebooks included)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Torch comes from the wheels on this machine's disk; an unpinned torch would pull a CUDA build.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test venv browser clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (semnb)" > /dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/semnb demo --out semnb-demo

# Two pytest workers with one torch thread each: oversubscribed threads make small torch work
# (few-shot training, notebook smoke runs) many times slower on a 2-core machine.
test: $(STAMP) browser
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile -q --nbval-lax tests notebooks

# Headless Chromium renders the HTML reports in the tests and drives notebook 04 in JupyterLab (with
# chromium-driver); installed from Debian's packages when we may (root with apt), otherwise those tests skip.
browser:
	@(command -v chromium && command -v chromedriver) > /dev/null || ! command -v apt-get > /dev/null || \
	  [ "$$(id -u)" != 0 ] || \
	  (apt-get install -y -q chromium chromium-driver > /dev/null 2>&1 || \
	   (apt-get update -q > /dev/null && apt-get install -y -q chromium chromium-driver > /dev/null)) || \
	  echo "could not install chromium and chromium-driver: browser tests will be skipped"

clean:
	rm -rf $(VENV) semnb-demo .pytest_cache
