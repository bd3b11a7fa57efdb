# Fresh machine: `make demo` or `make test` create .venv, install pexopt and build the models.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_MODEL := models/mbv2_w035_r144_int8.onnx
BUILT := models/mbv2_w035_r144_int8.onnx

.PHONY: demo test models bench bench-readme lint clean fuzz golden golden-regen

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

$(BUILT): models/build_models.py $(STAMP)
	$(BIN)/python models/build_models.py --out models

models: $(BUILT)

demo: $(STAMP) $(BUILT)
	$(BIN)/pexopt inspect $(DEMO_MODEL)
	$(BIN)/pexopt solve $(DEMO_MODEL) --sram 96k --verify -o out/demo_plan.json --emit-c out/demo_c
	$(BIN)/pexopt validate out/demo_plan.json $(DEMO_MODEL)

test: $(STAMP) $(BUILT)
	$(BIN)/python -m pytest -q -p no:cacheprovider

# the long fuzz profile: 5,000 random graphs per flavour (float, int8), 1,000 int8 graphs
# through the generated C, and 2,000 mutations of valid plans
fuzz: $(STAMP) $(BUILT)
	PEXOPT_FUZZ_EXAMPLES=5000 PEXOPT_FUZZ_CODEGEN_EXAMPLES=1000 PEXOPT_FUZZ_PLAN_MUTATIONS=2000 \
	  $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py tests/test_fuzz_codegen.py \
	  tests/test_fuzz_plans.py

# the golden plans and outputs of the redesign (issue #14): every variant re-solved, compiled,
# emulated; golden-regen writes them anew (only when a change of plans is intended)
golden: $(STAMP) $(BUILT)
	PEXOPT_GOLDEN=all $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_golden.py

golden-regen: $(STAMP) $(BUILT)
	$(BIN)/python tests/golden/regen.py

lint: $(STAMP)
	$(BIN)/ruff check pexopt tests models

SHARED_MODELS := $(wildcard ../shared/models/onnx/*.onnx)
bench: $(STAMP) $(BUILT)
	$(BIN)/pexopt bench models/*_int8.onnx $(SHARED_MODELS) --out bench_out

bench-readme: $(STAMP) $(BUILT)
	$(BIN)/pexopt bench models/*_int8.onnx $(SHARED_MODELS) --random-dags 4 --out bench_out --update-readme README.md

clean:
	rm -rf $(VENV) out bench_out
