/* Glob-style matching as Redis's KEYS and CONFIG GET do it: * ? [abc] [^a-z] and \ to quote. */
#ifndef KV_GLOB_H
#define KV_GLOB_H

#include <stdbool.h>
#include <stddef.h>

/* Whether str[0..slen) matches pat[0..plen). nocase: ASCII letters match either case. */
bool kv_glob_match(const char *pat, size_t plen, const char *str, size_t slen, bool nocase);

#endif
