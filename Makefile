# Two commands on a fresh machine:  `make demo`  and  `make test`  (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
REPO   := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
CLEAN_ROOT ?= $(REPO)

.PHONY: demo test test-all data data-all data-mednist mednist iopfl-data notebooks lint bench scale bench-science bench-quantize iopfl-compare report poc browser-check clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): requirements.txt requirements-dev.txt
	@echo ">> creating $(VENV): torch, nvflare, monai, mlflow, jupyterlab, ... (~2.5 GB download;"
	@echo ">> 3-10 minutes depending on the network and the machine; each package is listed as it comes)"
	$(PYTHON) -m venv $(VENV)
	@start=$$(date +%s); $(PY) -m pip install --progress-bar off -r requirements-dev.txt 2>&1 \
	  | { grep -E "^(Collecting|Installing|Successfully|ERROR)" || true; } \
	  | while IFS= read -r line; do echo "   [$$(( $$(date +%s) - start )) s] $$line"; done
	$(PY) -c "import torch, monai, nvflare, ignite, mlflow; print('>> environment ready: torch', torch.__version__, 'monai', monai.__version__, 'nvflare', nvflare.__version__)"
	touch $@

venv: $(STAMP)  ## create the virtual environment

data: $(STAMP)  ## synthetic MSD Task05 in its real layout -> converted per-site data + datalists
	$(PY) -m data_prep.msd_prostate generate --out data/raw --n-train 18 --n-test 2
	$(PY) -m data_prep.msd_prostate convert --task-dir data/raw/Task05_Prostate --out data/prostate --n-sites 3

data-all: $(STAMP)  ## synthetic FedICRA (FAZ, ODOC), FedMRI and cardiac (ACDC, M&Ms) sets, generated and converted
	$(PY) -m data_prep.fedicra generate --out data/fedicra
	$(PY) -m data_prep.fedicra convert --task faz --data-root data/fedicra/FAZ_h5
	$(PY) -m data_prep.fedicra convert --task odoc --data-root data/fedicra/ODOC_h5
	$(PY) -m data_prep.fedmri generate
	$(PY) -m data_prep.fedmri convert
	$(PY) -m data_prep.acdc generate
	$(PY) -m data_prep.acdc convert
	$(PY) -m data_prep.mnms generate
	$(PY) -m data_prep.mnms convert

data-mednist: $(STAMP)  ## synthetic MedNIST (six classes) split IID into 3 sites
	$(PY) -m data_prep.mednist generate
	$(PY) -m data_prep.mednist split --n-sites 3

mednist: data-mednist  ## MedNIST DenseNet121 FedAvg in the simulator (3 sites, 3 rounds)
	$(PY) -u jobs/mednist_fedavg.py --num-rounds 3

iopfl-data: $(STAMP)  ## synthetic six-site prostate MRI for IOP-FL, generated and converted
	$(PY) -m data_prep.multisite_prostate generate
	$(PY) -m data_prep.multisite_prostate convert

notebooks: $(STAMP)  ## open the tutorial notebooks in JupyterLab
	$(VENV)/bin/jupyter lab notebooks/

demo: data  ## the main job: Prostate 3-D UNet FedAvg in the simulator (3 sites), then results + dashboards
	$(PY) -u jobs/prostate_fedavg.py --env sim --n-clients 3 --num-rounds 3 --local-epochs 5

test: $(STAMP)  ## the default test suite (what CI runs)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)  ## every test, the slow end-to-end runs included
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: data  ## foundation benchmark (P1 FL vs plain loop, P2 learner throughput)
	$(PY) -u benchmarks/fedavg_overhead.py

scale: $(STAMP)  ## simulator scale: 1..16 sites of the 2-D prostate job and MedNIST, time/round + RSS (results/scale)
	$(PY) -u -m benchmarks.scale

bench-science: $(STAMP)  ## per-step cost of the FedICRA, FedMRI and cooperative-training cores
	$(PY) -u benchmarks/fedicra_step.py
	$(PY) -u benchmarks/fedmri_step.py
	$(PY) -u benchmarks/cooptrain_step.py

bench-quantize: $(STAMP)  ## bytes on the wire and Dice of the prostate job with --quantize none/float16/adaquant, one run
	$(PY) -u -m benchmarks.quantization

iopfl-compare: $(STAMP)  ## IOP-FL vs FedAvg/FedProx/FedBN/local/centralised on synthetic six-site prostate (3 seeds)
	$(PY) -u -m benchmarks.iopfl_compare

report: $(STAMP)  ## results/report.md + plots from every comparison CSV under results/; rewrites README's results block
	$(PY) -m benchmarks.report --results results --readme README.md

poc: data  ## the prostate job on a provisioned local POC deployment (2 sites), started and stopped cleanly
	$(PY) -u jobs/prostate_fedavg.py --env poc --n-clients 2 --num-rounds 2 --local-epochs 2

browser-check: $(STAMP)  ## install Debian's chromium and screenshot the MLflow UI of a finished run
	bash scripts/install_browser.sh
	$(PY) -m pytest -m browser -q

clean:  ## remove what the tools wrote under data, datalists, workspace, results (marked outputs, runs, POC); keeps anything else and the venv
	@if [ -x "$(REPO)/$(VENV)/bin/python" ] || [ "$(PY)" != "$(VENV)/bin/python" ]; then \
	  cd "$(REPO)" && $(PY) scripts/clean.py --root "$(abspath $(CLEAN_ROOT))"; \
	else echo "no $(VENV) yet: no tool of the bundle has written anything to clean"; fi
