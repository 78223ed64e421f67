# libweft_hook (hook/): built by `make` next to libweft, installed by `make install` with
# weft-hook.pc, tested by `make test`. Included by the top-level Makefile after TESTS is set,
# whose O, CC, CPPFLAGS, ALL_CFLAGS, LDFLAGS, LDLIBS, TEST_LDLIBS and the rule
# $(O)/%.c.o: %.c it uses.
#
# Its tests with real client libraries are built where the library links for this compiler
# (so not for the cross builds, nor without the -dev packages: .ci/run installs them).

HOOK_SRC := hook/real.c hook/fdtab.c hook/signal.c hook/wait.c hook/io.c hook/sock.c \
            hook/poll.c hook/sleep.c hook/dns.c
HOOK_OBJ := $(patsubst %,$(O)/%.o,$(HOOK_SRC))

# Only the libc names it replaces leave the shared library.
$(HOOK_OBJ): ALL_CFLAGS += -fvisibility=hidden
$(HOOK_OBJ): hook/hook.h

lib: $(O)/libweft_hook.a $(O)/libweft_hook.so

$(O)/libweft_hook.a: $(HOOK_OBJ)
	rm -f $@
	$(AR) rcs $@ $^

# The shared library needs libweft's: a program that preloads it must already have libweft
# (the same copy, so that the hooks see its scheduler). libweft.so.0 is the name both carry.
$(O)/libweft.so.0: | $(O)/libweft.so
	ln -sf libweft.so $@
$(O)/libweft_hook.so: $(HOOK_OBJ) $(O)/libweft.so $(O)/libweft.so.0
	$(CC) -shared -Wl,-soname,libweft_hook.so.0 $(LDFLAGS) -o $@ $(HOOK_OBJ) \
	    -L$(O) -l:libweft.so.0 -Wl,-rpath,'$$ORIGIN' $(LDLIBS) -ldl

# ---- Tests ----
# Linked statically, the hooks need all their objects in (--whole-archive: nothing in the test
# itself asks for them) and their names exported (-rdynamic), so that the shared client
# libraries' calls reach them.
HOOK_LINK := -Wl,--whole-archive $(O)/libweft_hook.a -Wl,--no-whole-archive $(O)/libweft.a \
             -rdynamic -ldl
HASH := \#
hook_can_link = $(shell printf '$(HASH)include <$(1)>\nint main(void){return 0;}\n' | \
                  $(CC) -x c - $(2) -o /dev/null >/dev/null 2>&1 && echo 1)
HOOK_HIREDIS := $(call hook_can_link,hiredis/hiredis.h,-lhiredis)
HOOK_CURL    := $(call hook_can_link,curl/curl.h,-lcurl)
HOOK_PQ      := $(call hook_can_link,libpq-fe.h,-I/usr/include/postgresql -lpq)

TESTS += test_hook test_hook_recv $(if $(HOOK_HIREDIS),test_hook_redis) \
         $(if $(HOOK_CURL),test_hook_curl) $(if $(HOOK_PQ),test_hook_pg)

$(O)/tests/test_hook: $(O)/tests/test_hook.c.o $(O)/tests/hook_support.c.o $(TEST_SUPPORT) \
                      $(O)/libweft_hook.a $(O)/libweft.a $(O)/tests/hook_preload_prog \
                      $(O)/libweft_hook.so
	$(CC) $(LDFLAGS) -o $@ $(O)/tests/test_hook.c.o $(O)/tests/hook_support.c.o \
	    $(TEST_SUPPORT) $(HOOK_LINK) $(LDLIBS) $(TEST_LDLIBS)
$(O)/tests/test_hook_recv: $(O)/tests/test_hook_recv.c.o $(O)/tests/hook_support.c.o \
                           $(TEST_SUPPORT) $(O)/libweft_hook.a $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(HOOK_LINK) $(LDLIBS) $(TEST_LDLIBS)
$(O)/tests/test_hook_redis: $(O)/tests/test_hook_redis.c.o $(O)/tests/hook_support.c.o \
                            $(TEST_SUPPORT) $(O)/libweft_hook.a $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(HOOK_LINK) -lhiredis $(LDLIBS) $(TEST_LDLIBS)
$(O)/tests/test_hook_curl: $(O)/tests/test_hook_curl.c.o $(O)/tests/hook_support.c.o \
                           $(TEST_SUPPORT) $(O)/libweft_hook.a $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(HOOK_LINK) -lcurl $(LDLIBS) $(TEST_LDLIBS)
$(O)/tests/test_hook_pg.c.o: CPPFLAGS += -I/usr/include/postgresql
$(O)/tests/test_hook_pg: $(O)/tests/test_hook_pg.c.o $(O)/tests/hook_support.c.o \
                         $(TEST_SUPPORT) $(O)/libweft_hook.a $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(HOOK_LINK) -lpq $(LDLIBS) $(TEST_LDLIBS)
$(O)/tests/test_hook.c.o $(O)/tests/test_hook_recv.c.o $(O)/tests/test_hook_redis.c.o \
$(O)/tests/test_hook_curl.c.o $(O)/tests/test_hook_pg.c.o $(O)/tests/hook_support.c.o: \
    tests/hook_support.h

# Run by test_hook with LD_PRELOAD=libweft_hook.so: linked with the shared libweft only.
$(O)/tests/hook_preload_prog: $(O)/tests/hook_preload_prog.c.o $(O)/libweft.so $(O)/libweft.so.0
	$(CC) $(LDFLAGS) -o $@ $< -L$(O) -l:libweft.so.0 -Wl,-rpath,'$$ORIGIN/..' $(LDLIBS)

# ---- Install ----
install: install-hook
.PHONY: install-hook
install-hook: lib
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(O)/libweft_hook.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(O)/libweft_hook.so $(DESTDIR)$(PREFIX)/lib/libweft_hook.so.$(VERSION)
	ln -sf libweft_hook.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libweft_hook.so.0
	ln -sf libweft_hook.so.0 $(DESTDIR)$(PREFIX)/lib/libweft_hook.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' hook/weft-hook.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/weft-hook.pc
