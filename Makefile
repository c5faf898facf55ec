# i.ann: GRASS GIS addon suite (built by g.extension) and the project's
# two entry points, `make demo` and `make test`, which also work before
# GRASS is installed: the GRASS build rules are included only when found.
MODULE_TOPDIR ?= $(shell grass --config path 2>/dev/null)

PGM = i.ann

SUBDIRS = lib i.ann.patches i.ann.train i.ann.classify

ifneq ($(wildcard $(MODULE_TOPDIR)/include/Make/Dir.make),)
include $(MODULE_TOPDIR)/include/Make/Dir.make

default: parsubdirs htmldir

install: installsubdirs
	$(INSTALL_DATA) $(HTMLDIR)/$(PGM).html $(INST_DIR)/docs/html/
endif

.PHONY: demo test setup

setup:
	bash .ci/setup

demo: setup
	bash demo/run_demo.sh

test: setup
	bash testsuite/run_tests.sh
