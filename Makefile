# weft: `make` builds the libraries, examples and tests (and the Tcl package where Tcl 8.6's
# headers are and the build is native); `make run` starts the coroutine echo
# server; `make test` runs every test and ends with "N passed, N failed".
#
# Knobs (all optional):
#   O=dir            build directory (default build); use one per configuration
#   CC=...           compiler; e.g. aarch64-linux-gnu-gcc or riscv64-linux-gnu-gcc to cross build
#   CTX=auto|asm|ucontext   context switch: hand-written assembly where there is one
#   SAN=1            AddressSanitizer + UndefinedBehaviorSanitizer (and the internal checks)
#   DEBUG=1          the internal invariant checks (WEFT_ASSERT) alone
#   TSAN=1           ThreadSanitizer
#   TESTS="..."      run only these test programs (e.g. TESTS="test_threads test_fork")
#   RUN="..."        prefix to run built programs (e.g. "qemu-riscv64 -L /usr/riscv64-linux-gnu")
#   PORT=1234        port for `make run`; PREFIX=/usr/local for `make install` (the header,
#                    the libraries, weft.pc, and share/weft/weft-gdb.py)
#
# libweft_hook (hook/, docs/hooks.md) is built, tested and installed with it: hook/hook.mk.

O       ?= build
CC      ?= cc
PREFIX  ?= /usr/local
PORT    ?= 1234
CTX     ?= auto
SAN     ?=
RUN     ?=

VERSION := 0.1.0
MACHINE := $(shell $(CC) -dumpmachine)
ifeq ($(CTX),auto)
  ifneq ($(filter x86_64-% aarch64-% riscv64-%,$(MACHINE)),)
    CTX := asm
  else
    CTX := ucontext
  endif
endif

CFLAGS  ?= -O2 -g
WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter
CPPFLAGS += -Iinclude -D_GNU_SOURCE
ALL_CFLAGS := -std=c11 $(WARN) -fPIC -pthread $(CFLAGS)
# Stack clash protection: a frame larger than a page touches each page in turn, so it meets
# a coroutine's guard gap instead of jumping over it into another stack (weft.pc passes it on).
CLASH   := $(shell $(CC) -fstack-clash-protection -Werror -x c -c /dev/null -o /dev/null \
             >/dev/null 2>&1 && echo -fstack-clash-protection)
ALL_CFLAGS += $(CLASH)
LDLIBS  += -pthread
TEST_LDLIBS := -lm
# io_uring: built when liburing is there for this compiler (URING=0 to leave it out).
HASH    := \#
URING   ?= $(shell printf '$(HASH)include <liburing.h>\nint main(void){struct io_uring r;return io_uring_queue_init(1,&r,0);}\n' \
             | $(CC) -x c - -luring -o /dev/null >/dev/null 2>&1 && echo 1)
ifeq ($(URING),1)
  CPPFLAGS += -DWEFT_HAVE_URING
  LDLIBS += -luring
  PC_PRIVATE := -luring
endif
# TLS: built when OpenSSL 3 is there for this compiler (TLS=0 to leave it out: the TLS calls
# then fail with ENOTSUP).
TLS     ?= $(shell printf '$(HASH)include <openssl/ssl.h>\nint main(void){return !SSL_CTX_new(TLS_method());}\n' \
             | $(CC) -x c - -lssl -lcrypto -o /dev/null >/dev/null 2>&1 && echo 1)
ifeq ($(TLS),1)
  CPPFLAGS += -DWEFT_HAVE_TLS
  LDLIBS += -lssl -lcrypto
  PC_REQUIRES := openssl
endif

ifneq ($(SAN)$(TSAN)$(DEBUG),)
  CPPFLAGS += -DWEFT_DEBUG  # internal invariant checks (WEFT_ASSERT)
endif
ifneq ($(SAN),)
  ALL_CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif
ifneq ($(TSAN),)
  ALL_CFLAGS += -fsanitize=thread -fno-omit-frame-pointer
  LDFLAGS += -fsanitize=thread
endif

LIB_SRC := src/stack.c src/buf.c src/timer.c src/addr.c src/check.c \
           src/backend.c src/backend_epoll.c src/backend_uring.c \
           src/sched.c src/request.c src/deep.c src/wait.c src/inbox.c src/fd.c src/sock.c src/chan.c src/chan_hold.c \
           src/tls.c \
           src/sync.c src/group.c src/offload.c src/tqueue.c \
           src/net.c src/serve.c src/dump.c
ifeq ($(CTX),ucontext)
  LIB_SRC += src/ctx/ctx_ucontext.c
  CPPFLAGS += -DWEFT_CTX_UCONTEXT
else ifneq ($(filter x86_64-%,$(MACHINE)),)
  LIB_SRC += src/ctx/ctx_asm.c src/ctx/ctx_x86_64.S
else ifneq ($(filter riscv64-%,$(MACHINE)),)
  LIB_SRC += src/ctx/ctx_asm.c src/ctx/ctx_riscv64.S
else
  LIB_SRC += src/ctx/ctx_asm.c src/ctx/ctx_aarch64.S
endif
LIB_OBJ := $(patsubst %,$(O)/%.o,$(LIB_SRC))

EXAMPLES := echo echo-blocking echo-events chat client kv httpd
EX_BIN   := $(addprefix $(O)/examples/,$(EXAMPLES))
# examples/kv: a Redis-protocol server; its parts (all but main.c) also go into the fuzz target.
KV_PARTS := request reply store glob commands introspect
KV_OBJ   := $(patsubst %,$(O)/kv-obj/%.o,$(KV_PARTS))
# examples/httpd: an HTTP/1.1 file server; its parts (all but main.c) also go into the fuzz
# target.
HTTPD_PARTS := request parse date path mime fcache response
HTTPD_OBJ   := $(patsubst %,$(O)/httpd-obj/%.o,$(HTTPD_PARTS))

TESTS    := test_ctx test_stack test_timer test_sched test_chan test_writers test_net test_serve test_hostile test_shutdown test_sync test_threads test_fork \
            test_examples test_chat test_kv test_kv_hostile test_kv_replay \
            test_dump test_gdb test_httpd test_httpd_hostile test_tls test_tls_peers test_tls_hostile
TEST_SUPPORT := $(O)/tests/harness.c.o $(O)/tests/echoload.c.o $(O)/tests/servers.c.o \
                $(O)/tests/tls_util.c.o
.DEFAULT_GOAL := all
include hook/hook.mk
# TESTS_EXCLUDE: programs left out of a `make test` (CI drops the slowest under valgrind).
TESTS_EXCLUDE ?=
TEST_BIN := $(addprefix $(O)/tests/,$(filter-out $(TESTS_EXCLUDE),$(TESTS)))

# The Tcl package (tcl/) is built where Tcl 8.6's headers are and the build is native (a cross
# compiler has no Tcl to link against); its tests run too unless programs run through $(RUN)
# (qemu, valgrind).
TCL_BUILD ?= $(if $(and $(wildcard /usr/include/tcl8.6/tcl.h),\
               $(filter $(shell uname -m),$(firstword $(subst -, ,$(MACHINE))))),1,0)
TCL_TESTS ?= $(if $(RUN),0,$(TCL_BUILD))
# tcl/ is run by its own make, without our make's flags (CFLAGS on our command line would
# replace the ones it needs), but as quiet as ours.
TCL_MAKE = env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL $(MAKE) --no-print-directory \
           $(if $(findstring s,$(firstword -$(MAKEFLAGS))),-s) -C tcl O=$(abspath $(O)) CC=$(CC) \
           SAN=$(SAN)

.PHONY: all lib examples tests tcl run test install clean
all: lib examples tests tcl
lib: $(O)/libweft.a $(O)/libweft.so
examples: $(EX_BIN)
tests: $(TEST_BIN) $(O)/tests/echoload $(O)/tests/soak

$(O)/%.c.o: %.c include/weft.h src/internal.h src/transport.h src/chan.h src/sys.h src/hook_entry.h Makefile hook/hook.mk
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c $< -o $@

$(TEST_BIN:%=%.c.o) $(TEST_SUPPORT): tests/harness.h tests/servers.h tests/tls_util.h

$(O)/%.S.o: %.S Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c $< -o $@

$(O)/libweft.a: $(LIB_OBJ)
	rm -f $@
	$(AR) rcs $@ $^

$(O)/libweft.so: $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,libweft.so.0 $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Examples: echo and echo-blocking share examples/echo_handler.c (the seed's one handler).
$(O)/examples/echo.c.o $(O)/examples/echo-blocking.c.o $(O)/examples/chat.c.o: examples/options.h
$(O)/examples/echo: $(O)/examples/echo.c.o $(O)/examples/echo_handler.c.o $(O)/examples/log.c.o $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(O)/examples/echo-blocking: $(O)/examples/echo-blocking.c.o $(O)/examples/echo_handler.c.o $(O)/examples/log.c.o $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(O)/examples/chat: $(O)/examples/chat.c.o $(O)/examples/log.c.o $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(O)/examples/client: $(O)/examples/client.c.o $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(O)/examples/echo-events: $(O)/examples/echo-events.c.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
# (Its objects live in $(O)/kv-obj: $(O)/examples/kv is the program.)
$(O)/examples/kv: $(O)/kv-obj/main.o $(KV_OBJ) $(O)/libweft.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(O)/kv-obj/%.o: examples/kv/%.c $(wildcard examples/kv/*.h) include/weft.h Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c $< -o $@
# (The same for httpd: $(O)/examples/httpd is the program.)
$(O)/examples/httpd: $(O)/httpd-obj/main.o $(HTTPD_OBJ) $(O)/libweft.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(O)/httpd-obj/%.o: examples/httpd/%.c $(wildcard examples/httpd/*.h) include/weft.h Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c $< -o $@

# The kv tests talk to examples/kv with redis-cli, redis-benchmark, redis-server and, where
# its headers are there for this compiler, hiredis.
HIREDIS ?= $(shell printf '$(HASH)include <hiredis/hiredis.h>\nint main(void){return redisConnect("",0)!=0;}\n' \
             | $(CC) -x c - -lhiredis -o /dev/null >/dev/null 2>&1 && echo 1)
KV_TEST_SUPPORT := $(O)/tests/harness.c.o $(O)/tests/kvtest.c.o
$(O)/tests/test_kv.c.o: CPPFLAGS += $(if $(filter 1,$(HIREDIS)),-DKV_TEST_HIREDIS)
$(O)/tests/test_kv.c.o $(O)/tests/test_kv_hostile.c.o $(O)/tests/test_kv_replay.c.o \
$(O)/tests/kvtest.c.o: tests/kvtest.h
$(O)/tests/test_kv: $(O)/tests/test_kv.c.o $(KV_TEST_SUPPORT) $(O)/examples/kv
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LDLIBS) $(if $(filter 1,$(HIREDIS)),-lhiredis)
$(O)/tests/test_kv_%: $(O)/tests/test_kv_%.c.o $(KV_TEST_SUPPORT) $(O)/examples/kv
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LDLIBS)

# The httpd tests talk to examples/httpd with curl and over raw sockets.
HTTPD_TEST_SUPPORT := $(O)/tests/harness.c.o $(O)/tests/httpdtest.c.o
$(O)/tests/test_httpd.c.o $(O)/tests/test_httpd_hostile.c.o $(O)/tests/httpdtest.c.o: \
    tests/httpdtest.h
$(O)/tests/test_httpd $(O)/tests/test_httpd_hostile: $(O)/tests/%: $(O)/tests/%.c.o \
    $(HTTPD_TEST_SUPPORT) $(O)/examples/httpd
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LDLIBS)

$(O)/tests/%: $(O)/tests/%.c.o $(TEST_SUPPORT) $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(TEST_LDLIBS)
$(O)/tests/echoload: $(O)/tests/echoload_main.c.o $(O)/tests/echoload.c.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

tcl:
ifeq ($(TCL_BUILD),1)
	$(TCL_MAKE)
endif

run: $(O)/examples/echo
	$(RUN) $(O)/examples/echo -p $(PORT)

test: all
	@WEFT_RUN="$(RUN)" WEFT_BUILD="$(O)" TCL_TESTS="$(TCL_TESTS)" \
	 TCL_MAKE_ARGS="O=$(abspath $(O)) CC=$(CC) SAN=$(SAN)" sh tests/run.sh $(TEST_BIN)

install: lib
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	    $(DESTDIR)$(PREFIX)/share/weft
	install -m 644 include/weft.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 tools/weft-gdb.py $(DESTDIR)$(PREFIX)/share/weft/
	install -m 644 $(O)/libweft.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(O)/libweft.so $(DESTDIR)$(PREFIX)/lib/libweft.so.$(VERSION)
	ln -sf libweft.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libweft.so.0
	ln -sf libweft.so.0 $(DESTDIR)$(PREFIX)/lib/libweft.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' -e 's|@PRIVATE@|$(PC_PRIVATE)|' \
	    -e 's|@CFLAGS@|$(CLASH)|' -e 's|@REQUIRES@|$(PC_REQUIRES)|' weft.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/weft.pc
ifeq ($(TCL_BUILD),1)
	$(TCL_MAKE) install PREFIX=$(PREFIX) DESTDIR=$(DESTDIR)
endif

clean:
	rm -rf $(O)
.SECONDARY:
include tests/fuzz/fuzz.mk
include tests/soak.mk
include bench/bench.mk
