# Packaging entry points (see docs/packaging.md).
#   make deb    build dist/retrofit_<version>_all.deb from a clean copy of the source
#   make lint   run lintian on it (fails on errors, lists warnings and info tags)
# Build dependencies: tools/install-build-deps (as root).

SHELL := /bin/sh
VERSION := $(shell dpkg-parsechangelog -l debian/changelog -S Version 2>/dev/null)
DIST := dist
DEB := $(DIST)/retrofit_$(VERSION)_all.deb
# The package is built for Debian's /usr/bin/python3: keep pyenv, virtualenvs and
# /usr/local out of the build's PATH.
BUILD_PATH := /usr/sbin:/usr/bin:/sbin:/bin

.PHONY: deb lint clean-dist

# The source copy: files git tracks or would track (not .venv, dist, caches: see
# .gitignore), or, outside a git checkout, everything but those.
deb:
	@set -eu; \
	if [ -z "$(VERSION)" ]; then \
		echo "deb: cannot read the version from debian/changelog (hint: run tools/install-build-deps)" >&2; \
		exit 1; \
	fi; \
	tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/retrofit-deb.XXXXXX"); \
	trap 'rm -rf "$$tmp"' EXIT INT TERM; \
	src="$$tmp/retrofit-$(VERSION)"; \
	mkdir "$$src"; \
	echo "deb: copying the source tree to $$src"; \
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		git ls-files -z --cached --others --exclude-standard \
			| xargs -0 sh -c 'for f; do { [ -e "$$f" ] || [ -L "$$f" ]; } && printf "%s\0" "$$f"; done; :' sh \
			| tar --null --no-recursion -T - -cf - \
			| tar -xf - -C "$$src"; \
	else \
		tar --exclude-vcs --exclude=./.venv --exclude=./$(DIST) --exclude='*.egg-info' \
			--exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache \
			--exclude=.ruff_cache --exclude=./build -cf - . | tar -xf - -C "$$src"; \
	fi; \
	(cd "$$src" && env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV \
		PATH=$(BUILD_PATH) dpkg-buildpackage -us -uc -b); \
	mkdir -p $(DIST); \
	for f in "$$tmp"/*.deb "$$tmp"/*.buildinfo "$$tmp"/*.changes; do \
		cp "$$f" "$(DIST)/.$${f##*/}.tmp" && mv -f "$(DIST)/.$${f##*/}.tmp" "$(DIST)/$${f##*/}"; \
	done; \
	echo "deb: $(CURDIR)/$(DEB) ($$(stat -c %s $(DEB)) bytes)"

lint: $(DEB)
	lintian --fail-on error --display-info $(DEB)

$(DEB):
	$(MAKE) deb

clean-dist:
	rm -rf $(DIST)
