# Soak test: `make soak DURATION=600` runs connection churn against an in-process echo server
# for DURATION seconds, verifying every echoed byte, then checks that the server's fds,
# coroutines and memory are back to their baseline (see tests/soak.c). Included by the
# top-level Makefile, whose O, CC, CPPFLAGS, ALL_CFLAGS, LDFLAGS, LDLIBS and RUN it uses.

DURATION ?= 600

$(O)/tests/soak: $(O)/tests/soak.c.o $(O)/tests/echoload.c.o $(O)/examples/echo_handler.c.o $(O)/examples/log.c.o \
                 $(O)/libweft.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(O)/tests/soak.c.o: tests/echoload.h examples/echo_handler.h

.PHONY: soak
soak: $(O)/tests/soak
	$(RUN) $(O)/tests/soak -d $(DURATION)
