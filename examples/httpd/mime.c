/* Content-Type by file extension: the common types of a static site, compared without case.
 * Looked up once per file opened (the cache keeps the answer), so a short list suffices. */
#include "files.h"

#include <string.h>
#include <strings.h>

static const struct {
    const char *ext, *type;
} types[] = {
    {"html", "text/html"},
    {"htm", "text/html"},
    {"css", "text/css"},
    {"js", "text/javascript"},
    {"mjs", "text/javascript"},
    {"json", "application/json"},
    {"map", "application/json"},
    {"xml", "text/xml"},
    {"txt", "text/plain"},
    {"md", "text/markdown"},
    {"csv", "text/csv"},
    {"svg", "image/svg+xml"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"webp", "image/webp"},
    {"avif", "image/avif"},
    {"ico", "image/x-icon"},
    {"bmp", "image/bmp"},
    {"woff", "font/woff"},
    {"woff2", "font/woff2"},
    {"ttf", "font/ttf"},
    {"otf", "font/otf"},
    {"wasm", "application/wasm"},
    {"pdf", "application/pdf"},
    {"zip", "application/zip"},
    {"gz", "application/gzip"},
    {"tar", "application/x-tar"},
    {"xz", "application/x-xz"},
    {"bz2", "application/x-bzip2"},
    {"mp3", "audio/mpeg"},
    {"ogg", "audio/ogg"},
    {"wav", "audio/wav"},
    {"mp4", "video/mp4"},
    {"webm", "video/webm"},
};

const char *mime_type(const char *name, size_t len)
{
    size_t i = len;
    while (i > 0 && name[i - 1] != '.' && name[i - 1] != '/')
        i--;
    if (i == 0 || name[i - 1] != '.' || i == len)
        return "application/octet-stream";
    const char *ext = name + i;
    size_t n = len - i;
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++)
        if (strlen(types[k].ext) == n && strncasecmp(ext, types[k].ext, n) == 0)
            return types[k].type;
    return "application/octet-stream";
}
