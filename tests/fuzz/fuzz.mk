# libFuzzer targets, included by the top-level Makefile (uses its LIB_SRC, CPPFLAGS, WARN, O).
#
#   make fuzz                   build every target with clang and run each for FUZZ_SECONDS
#   make fuzz FUZZ_SECONDS=600  longer
#   make fuzz-build             build only
#   make fuzz-gets / fuzz-addr / fuzz-kv / fuzz-httpd / fuzz-tls_accept  one target
#
# Each target is built from the library sources themselves (not libweft.a, which may come
# from gcc), instrumented with -fsanitize=fuzzer,address,undefined, into $(O)/fuzz/. It runs
# on $(O)/fuzz/corpus-NAME: the seeds of tests/fuzz/corpus/NAME are copied in first, and what
# libFuzzer adds stays there for the next run (rm -rf $(O)/fuzz/corpus-* to start afresh);
# the committed corpus is never written. A crash fails the target; the input that caused it
# is $(O)/fuzz/NAME-crash-* (replay: $(O)/fuzz/fuzz_NAME FILE) and the log $(O)/fuzz/NAME.log.
# The targets call no context switch, so any CTX works; LIB_SRC must be for the host machine.

FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS  ?= -g -O1 -fno-omit-frame-pointer
FUZZ_SAN     := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_NAMES   := gets addr kv httpd tls_accept
FUZZ_DIR     := $(O)/fuzz
FUZZ_BIN     := $(addprefix $(FUZZ_DIR)/fuzz_,$(FUZZ_NAMES))
FUZZ_RUNS    := $(addprefix fuzz-,$(FUZZ_NAMES))
# Longest generated input: the line reader takes a stream of up to 64 KiB, but inputs of a
# few KiB already reach every path (the buffer grows past 4 KiB, large reads skip it); the
# address parser's fields are at most 256 bytes; a ClientHello is about 500 bytes, and 16 KiB
# is a whole record (the handshake's reads ask for no more at once).
FUZZ_MAXLEN_gets := 16384
FUZZ_MAXLEN_addr := 512
# examples/kv's parser and commands: pipelines of a few dozen requests fit in 16 KiB, and
# byte 0 can shrink the limits so that their paths are reached with short inputs.
FUZZ_MAXLEN_kv := 16384
FUZZ_EXTRA_kv := $(patsubst %,examples/kv/%.c,$(KV_PARTS)) -Iexamples/kv
$(FUZZ_DIR)/fuzz_kv: $(patsubst %,examples/kv/%.c,$(KV_PARTS)) $(wildcard examples/kv/*.h)
# examples/httpd's request reader and responder: a pipeline of requests with their headers
# fits in 8 KiB, and byte 0 can shrink the limits.
FUZZ_MAXLEN_httpd := 8192
FUZZ_EXTRA_httpd := $(patsubst %,examples/httpd/%.c,$(HTTPD_PARTS)) -Iexamples/httpd
$(FUZZ_DIR)/fuzz_httpd: $(patsubst %,examples/httpd/%.c,$(HTTPD_PARTS)) \
    $(wildcard examples/httpd/*.h)
FUZZ_MAXLEN_tls_accept := 16384

.PHONY: fuzz fuzz-build $(FUZZ_RUNS)
fuzz: $(FUZZ_RUNS)
fuzz-build: $(FUZZ_BIN)

$(FUZZ_BIN): $(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c $(LIB_SRC) include/weft.h src/internal.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) -std=c11 $(WARN) $(FUZZ_CFLAGS) $(FUZZ_SAN) -o $@ $< $(LIB_SRC) \
	    $(FUZZ_EXTRA_$*) -pthread \
	    $(filter -l%,$(LDLIBS))

# libFuzzer stops itself after FUZZ_SECONDS; `timeout` is only a backstop for a hang it
# cannot interrupt. The summary line comes from -print_final_stats.
$(FUZZ_RUNS): fuzz-%: $(FUZZ_DIR)/fuzz_%
	@mkdir -p $(FUZZ_DIR)/corpus-$*
	@cp tests/fuzz/corpus/$*/* $(FUZZ_DIR)/corpus-$*/
	@rm -f $(FUZZ_DIR)/$*-crash-* $(FUZZ_DIR)/$*-leak-* $(FUZZ_DIR)/$*-timeout-* \
	       $(FUZZ_DIR)/$*-oom-*
	@log=$(FUZZ_DIR)/$*.log; \
	timeout -k 10 $$(( $(FUZZ_SECONDS) + 120 )) $(FUZZ_DIR)/fuzz_$* \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=$(FUZZ_MAXLEN_$*) -timeout=10 \
	    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/$*- \
	    $(FUZZ_DIR)/corpus-$* >$$log 2>&1; \
	rc=$$?; \
	runs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log); \
	eps=$$(sed -n 's/^stat::average_exec_per_sec: *//p' $$log); \
	if [ $$rc -eq 0 ]; then \
	    echo "fuzz $*: $${runs:-?} runs in $(FUZZ_SECONDS) s ($${eps:-?} exec/s), no crash"; \
	else \
	    tail -n 40 $$log; \
	    echo "fuzz $*: FAILED (exit $$rc) after $${runs:-?} runs; log $$log;" \
	         "input:" $$(ls $(FUZZ_DIR)/$*-* 2>/dev/null); \
	    exit 1; \
	fi
