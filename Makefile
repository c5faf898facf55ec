# i.ann: GRASS GIS addon suite (built by g.extension) and the project's
# two entry points, `make demo` and `make test`, which also work before
# GRASS is installed: the GRASS build rules are included only when found.
MODULE_TOPDIR ?= $(shell grass --config path 2>/dev/null)

PGM = i.ann

SUBDIRS = lib i.ann.patches i.ann.train i.ann.classify i.ann.sample

# The pictures of the suite's page i.ann.html (drawn by demo/make_figures.sh)
IANN_IMAGES = i_ann_classes.png i_ann_probability.png i_ann_uncertainty.png \
	i_ann_confusion.png i_ann_curves.png

ifneq ($(wildcard $(MODULE_TOPDIR)/include/Make/Dir.make),)
include $(MODULE_TOPDIR)/include/Make/Dir.make

default: parsubdirs htmldir $(patsubst %,$(HTMLDIR)/%,$(IANN_IMAGES))

install: installsubdirs
	$(INSTALL_DATA) $(HTMLDIR)/$(PGM).html $(INST_DIR)/docs/html/
	$(INSTALL_DATA) $(patsubst %,$(HTMLDIR)/%,$(IANN_IMAGES)) $(INST_DIR)/docs/html/
endif

.PHONY: demo test setup

# The set-up: requirements.txt for the demo (and `make setup`), with
# requirements-dev.txt too (tests, style checks) for the tests.
setup:
	bash .ci/setup

demo: setup
	bash demo/run_demo.sh

test:
	bash .ci/setup --dev
	bash testsuite/run_tests.sh
