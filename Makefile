# procthread - thin wrapper over CMake and busted.
#   make test        install what is missing, build every Lua, run the specs
#   make lab         run the whole lab into report/ (QUICK=1: the quick lab)
#   make bench       benchmarks against the plain-C floor
LUAS ?= 5.1 5.2 5.3 5.4 luajit
LAB_LUA ?= 5.4
BUSTED_FLAGS ?=
DEBIAN_PACKAGES = lua5.1 lua5.2 lua5.3 lua5.4 luajit liblua5.1-0-dev liblua5.2-dev \
  liblua5.3-dev liblua5.4-dev libluajit-5.1-dev lua-busted cmake gcc make \
  lua-socket wrk lua-dkjson luarocks

.PHONY: all deps build test lab bench clean $(addprefix build-,$(LUAS))

all: build

# Install the Debian packages the build and the specs need (as root);
# otherwise print the command to run.
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null || exit 1; \
	  else \
	    echo "missing Debian packages; run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

build: $(addprefix build-,$(LUAS))

$(addprefix build-,$(LUAS)): build-%:
	@cmake -S . -B build/$* -DLUA_VERSION=$* -DCMAKE_RULE_MESSAGES=OFF >/dev/null
	@out=$$(cmake --build build/$* -- --no-print-directory -s 2>&1); rc=$$?; \
	  printf '%s\n' "$$out" | grep -v -e '^\[ *[0-9]*%\] Built target' -e '^$$' || true; exit $$rc

test: deps build
	@build/$(firstword $(LUAS))/arena_test
	@sh spec/run $(LUAS)

lab: deps build-$(LAB_LUA)
	@PROCTHREAD_LUA=lua$(subst luajit,jit,$(LAB_LUA)) bin/procthread-lab run --out report $(if $(QUICK),--quick)

bench: deps build-$(LAB_LUA)
	@sh bench/run $(LAB_LUA)

clean:
	rm -rf build report
