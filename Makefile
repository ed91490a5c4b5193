# nattrail: `make demo` and `make test` are the two commands; every other target is a step of them.
# Each step does its own set-up on a fresh Debian 12 machine (as root) and is safe to run again.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := $(CURDIR)/.venv
STATE := $(CURDIR)/.lab
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# Debian's own Python: the one a fresh machine has, whatever else is on the PATH.
PYTHON := /usr/bin/python3

# Host packages: the container engine, the image builder, nft for the ruleset checks in unit
# tests, and what the virtualenv needs to exist.
DEB_PACKAGES := docker.io mmdebstrap nftables iproute2 python3-venv python3-pip git ca-certificates

.PHONY: help demo test deps venv engine engine-stop image lab-up lab-down lint unit molecule mutants clean

help:
	@echo "make demo   build the lab, converge the appliance and show it working"
	@echo "make test   lint, unit tests and the whole-appliance Molecule scenario"
	@echo "make lab-down   remove the lab's containers and networks"
	@echo "make engine-stop   stop the Docker engine that make started"
	@echo "make mutants   mutation testing of the rules compiler and the daemons (docs/testing.md)"

$(STATE):
	mkdir -p $@

deps: $(STATE)/deps.stamp
$(STATE)/deps.stamp: Makefile | $(STATE)
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml $(STATE)/deps.stamp
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

engine: deps
	lab/engine.sh start

engine-stop:
	lab/engine.sh stop

image: engine
	lab/image.sh

lab-up: venv image
	ansible-playbook lab/up.yml

lab-down: venv
	@if timeout 5 docker version >/dev/null 2>&1; then ansible-playbook lab/down.yml; \
	else echo "no Docker engine answers: nothing to take down"; fi

demo: lab-up
	ansible-playbook site.yml
	lab/demo.sh

lint: venv
	yamllint .
	ansible-lint
	ansible-playbook --syntax-check -i inventory/example site.yml
	ruff check .
	ruff format --check .

unit: venv | $(STATE)
	pytest --junitxml=$(STATE)/junit-unit.xml

# Mutation testing (not part of `make test`: it runs the unit tests once per mutant, about 15 minutes on
# 2 cores). mutmut works in ./mutants; the score script prints each module's score and fails below the goals.
mutants: venv
	rm -rf mutants
	mutmut run --max-children $$(nproc) >$(STATE)/mutmut.log 2>&1 || { tail -c 2000 $(STATE)/mutmut.log; exit 1; }
	python lab/mutation-score.py

molecule: venv image
	@echo "molecule: the scenario uses the lab's names and addresses, so it replaces a demo lab that is up"
	rm -f $(STATE)/junit-molecule.xml
	molecule test -s default

test: lint unit molecule
	lab/test-summary.py tests/allowed-skips.txt $(STATE)/junit-unit.xml $(STATE)/junit-molecule.xml

clean: lab-down
	rm -rf $(VENV) $(STATE) mutants .build
