# bnprivacy: `make book` and `make test` do all set-up themselves (venv, install) on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= quick
CH ?= 01_training
ARGS ?=
NAME ?=

.PHONY: help venv book html chapter params test assignments check-html publish record clean clean-results

help:
	@echo "make book [PROFILE=quick|full]      execute every chapter, then build _build/html"
	@echo "make test                           run the test suite"
	@echo "make chapter CH=01_training ARGS='-p dataset mnist -p arch resnet18'   rerun one chapter"
	@echo "make params CH=01_training          list a chapter's parameters"
	@echo "make html                           rebuild the HTML from the executed chapters"
	@echo "make record PROFILE=cifar NAME=cifar10-airbench execute chapters 01-04 and 06 once, write recorded/NAME/"
	@echo "make assignments                    student and teacher notebooks in _build/assignments/"
	@echo "make check-html                     visit every built page in headless Chromium"
	@echo "make publish                        push _build/html to the gh-pages branch (GitHub Pages)"

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

book: $(STAMP)
	$(PY) -m bnprivacy book --profile $(PROFILE) $(ARGS)

html: $(STAMP)
	$(PY) -m bnprivacy html

chapter: $(STAMP)
	$(PY) -m bnprivacy chapter $(CH) --profile $(PROFILE) $(ARGS)

params: $(STAMP)
	$(PY) -m bnprivacy params $(CH)

record: $(STAMP)
	@test -n "$(NAME)" || { echo "make record needs NAME=<folder under recorded/>, e.g. NAME=cifar10-airbench"; exit 1; }
	$(PY) -m bnprivacy record --profile $(PROFILE) --name $(NAME) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

assignments: $(STAMP)
	$(PY) -m bnprivacy assignments

check-html: $(STAMP)
	$(PY) -m bnprivacy check-html

# -n: add .nojekyll (Sphinx's _static/ must be served); -p: push; -f: gh-pages holds only the site.
publish: $(STAMP)
	@test -f _build/html/index.html || { echo "no built book in _build/html: run make book first"; exit 1; }
	rm -rf _build/html/binder && cp -r binder _build/html/binder
	$(VENV)/bin/ghp-import -n -p -f -m "Publish the book" _build/html

clean:
	rm -rf _build

clean-results:
	rm -rf results/train results/runs
