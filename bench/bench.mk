# Benchmarks against natural baselines measured in the same run (see bench/README.md).
# Included by the top-level Makefile, whose O, CC, CPPFLAGS, ALL_CFLAGS, LDFLAGS, LDLIBS, RUN,
# the rule $(O)/%.c.o: %.c and the targets $(O)/libweft.a, $(O)/tests/echoload.c.o,
# $(O)/examples/echo_handler.c.o and $(O)/examples/echo-events it uses.
#
#   make bench                 every benchmark (others may add theirs as prerequisites)
#   make bench-sync            queue/tqueue ping-pong, mutex hand-off, offload, yield
#   make bench-echo-threads    echo server on weft_serve_threads, 1 vs 2 threads, vs echo-events
#   QUICK=1                    a short run of each (CI)
#   make bench-ab BASE=REV     the echo matrix, this tree against commit REV in the same run
#   make bench-tls             weft's TLS vs base_tls (hand-written OpenSSL + epoll)
#   make bench-tls-ab BASE=REV the TLS rows, this tree against commit REV in the same run
#
# The runs hold $(O)/bench/.lock (flock), so under make -j they still run one at a time and
# do not measure each other.

QUICK ?=
BENCH_QUICK := $(if $(filter-out 0,$(QUICK)),-q)
BENCH_LOCK  := flock $(O)/bench/.lock

# Measured code is built with -O2 whatever CFLAGS says (appended, so it wins over -O0).
$(O)/bench/%.c.o: ALL_CFLAGS += -O2
$(O)/bench/echo_threads_bench.c.o: tests/echoload.h examples/echo_handler.h

$(O)/bench/sync_bench: $(O)/bench/sync_bench.c.o $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(O)/bench/echo_threads_bench: $(O)/bench/echo_threads_bench.c.o $(O)/tests/echoload.c.o \
                               $(O)/examples/echo_handler.c.o $(O)/examples/log.c.o $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

.PHONY: bench bench-sync bench-echo-threads
bench: bench-sync bench-echo-threads

bench-sync: $(O)/bench/sync_bench
	$(BENCH_LOCK) $(RUN) $(O)/bench/sync_bench $(BENCH_QUICK)

bench-echo-threads: $(O)/bench/echo_threads_bench $(O)/examples/echo-events
	$(BENCH_LOCK) $(RUN) $(O)/bench/echo_threads_bench -e $(O)/examples/echo-events $(BENCH_QUICK)

# ---- Echo matrix and micro-benchmarks (bench/echo_bench.c, loadgen.c, base_*.c, micro.c) ----
#   make bench-echo            weft echo (WEFT_BACKEND=epoll and =uring) vs base_epoll, base_uring
#   make bench-micro           context switch, spawn+join, coroutines per process
# liburing present? Without it base_uring is not built and the uring baseline is skipped.
HAVE_LIBURING := $(shell echo '#include <liburing.h>' | $(CC) -E - >/dev/null 2>&1 && echo yes)
BENCH_URING   := $(if $(HAVE_LIBURING),$(O)/bench/base_uring)

$(O)/bench/loadgen.c.o $(O)/bench/loadgen_tls.c.o $(O)/bench/loadgen_core.c.o: bench/loadgen.h
$(O)/bench/echo_bench.c.o $(O)/bench/tls_bench.c.o $(O)/bench/kv_bench.c.o \
    $(O)/bench/httpd_bench.c.o $(O)/bench/run.c.o: bench/run.h
$(O)/bench/loadgen: $(O)/bench/loadgen.c.o $(O)/bench/loadgen_tls.c.o $(O)/bench/loadgen_core.c.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(O)/bench/base_epoll: $(O)/bench/base_epoll.c.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(O)/bench/base_uring: $(O)/bench/base_uring.c.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -luring
$(O)/bench/echo_bench: $(O)/bench/echo_bench.c.o $(O)/bench/run.c.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(O)/bench/micro: $(O)/bench/micro.c.o $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

.PHONY: bench-echo bench-micro
bench: bench-echo bench-micro

bench-echo: $(O)/bench/echo_bench $(O)/bench/loadgen $(O)/bench/base_epoll $(BENCH_URING) $(O)/examples/echo
	$(if $(HAVE_LIBURING),,@echo "note: liburing not found (apt-get install liburing-dev): the base_uring column is skipped")
	$(BENCH_LOCK) $(RUN) $(O)/bench/echo_bench -b $(O) $(if $(HAVE_LIBURING),,-U) $(BENCH_QUICK)

bench-micro: $(O)/bench/micro
	$(BENCH_LOCK) $(RUN) $(O)/bench/micro $(BENCH_QUICK)

# A/B: the echo of commit $(BASE) (exported with git archive, built in $(O)/ab-base) runs in
# the same rotation as this tree's; the last table gives this / base in rt/cpu-s.
BASE ?= HEAD
.PHONY: bench-ab
bench-ab: $(O)/bench/echo_bench $(O)/bench/loadgen $(O)/bench/base_epoll $(BENCH_URING) $(O)/examples/echo
	rm -rf $(O)/ab-src && mkdir -p $(O)/ab-src
	git archive $(BASE) | tar -x -C $(O)/ab-src
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL $(MAKE) -s -C $(O)/ab-src O=$(abspath $(O))/ab-base \
	    CC=$(CC) $(abspath $(O))/ab-base/examples/echo
	$(BENCH_LOCK) $(RUN) $(O)/bench/echo_bench -b $(O) -B $(O)/ab-base \
	    $(if $(HAVE_LIBURING),,-U) $(BENCH_QUICK)

# ---- examples/kv against redis-server 7 (bench/kv_bench.c) ----
#   make bench-kv              redis-benchmark SET/GET/INCR/MSET at -c 50 -P 1, -c 50 -P 16 and
#                              -c 1000 -P 1, against kv and redis-server, 3 reps (a few minutes)
$(O)/bench/kv_bench: $(O)/bench/kv_bench.c.o $(O)/bench/run.c.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

.PHONY: bench-kv
bench: bench-kv

bench-kv: $(O)/bench/kv_bench $(O)/examples/kv
	$(BENCH_LOCK) $(RUN) $(O)/bench/kv_bench -b $(O) $(BENCH_QUICK)

# ---- libweft_hook: hiredis GET/SET, sync API in hooked coroutines vs async on libevent vs
# threads (bench/hook_bench.c) ----
#   make bench-hook            about 40 s (QUICK=1: about 3 s)
# Built where hiredis and libevent link (libhiredis-dev, libevent-dev) and run where
# redis-server is installed; elsewhere it says why and skips.
HOOK_BENCH_OK := $(and $(HOOK_HIREDIS),$(call hook_can_link,event2/event.h,-levent))
$(O)/bench/hook_bench: $(O)/bench/hook_bench.c.o $(O)/libweft_hook.a $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $< $(HOOK_LINK) -lhiredis -levent $(LDLIBS)

.PHONY: bench-hook
bench: bench-hook
ifeq ($(HOOK_BENCH_OK),1)
bench-hook: $(O)/bench/hook_bench
	@if command -v redis-server >/dev/null; then \
	    $(BENCH_LOCK) $(RUN) $(O)/bench/hook_bench $(BENCH_QUICK); \
	else echo "note: redis-server not installed: bench-hook skipped"; fi
else
bench-hook:
	@echo "note: hiredis or libevent headers missing (libhiredis-dev, libevent-dev): bench-hook skipped"
endif

# ---- TLS (bench/tls_bench.c, base_tls.c, loadgen --tls) ----
#   make bench-tls             weft echo --cert/--key (epoll, uring) vs base_tls: round trips,
#                              handshakes (P-256, RSA-2048, resumed), idle memory
# Built where the library is built with OpenSSL (TLS=1 in the top-level Makefile).
$(O)/bench/base_tls: $(O)/bench/base_tls.c.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(O)/bench/tls_bench: $(O)/bench/tls_bench.c.o $(O)/bench/run.c.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

.PHONY: bench-tls
bench: bench-tls

.PHONY: bench-tls-ab
ifeq ($(TLS),1)
bench-tls: $(O)/bench/tls_bench $(O)/bench/loadgen $(O)/bench/base_tls $(O)/examples/echo
	$(BENCH_LOCK) $(RUN) $(O)/bench/tls_bench -b $(O) $(BENCH_QUICK)

# A/B: the echo of commit $(BASE) (built in $(O)/ab-base, as for bench-ab) in the same rotation.
bench-tls-ab: $(O)/bench/tls_bench $(O)/bench/loadgen $(O)/bench/base_tls $(O)/examples/echo
	rm -rf $(O)/ab-src && mkdir -p $(O)/ab-src
	git archive $(BASE) | tar -x -C $(O)/ab-src
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL $(MAKE) -s -C $(O)/ab-src O=$(abspath $(O))/ab-base \
	    CC=$(CC) $(abspath $(O))/ab-base/examples/echo
	$(BENCH_LOCK) $(RUN) $(O)/bench/tls_bench -b $(O) -B $(O)/ab-base $(BENCH_QUICK)
else
bench-tls bench-tls-ab:
	@echo "note: built without OpenSSL (apt-get install libssl-dev): no TLS benchmark"
endif

# ---- examples/httpd against nginx and h2o (bench/httpd_bench.c) ----
#   make bench-httpd           wrk -t1 at 100 and 1,000 connections, a 13-byte and a 64 KiB
#                              file, against httpd, nginx and h2o, 3 reps of 10 s (~6 min)
#   HTTPD_BENCH_ARGS="-a '--fd-cache 0'"   one more httpd, with these flags, in the same run
HTTPD_BENCH_ARGS ?=
$(O)/bench/httpd_bench: $(O)/bench/httpd_bench.c.o $(O)/bench/run.c.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

.PHONY: bench-httpd
bench: bench-httpd

bench-httpd: $(O)/bench/httpd_bench $(O)/examples/httpd
	$(BENCH_LOCK) $(RUN) $(O)/bench/httpd_bench -b $(O) $(BENCH_QUICK) $(HTTPD_BENCH_ARGS)
