/* unaligned.h -- loads of 4 and 8 bytes from any address, in the machine's byte order. The
 * parser, the environ's iterator and the runner compare names and values a word at a time;
 * memcpy into a local is the portable way to read a word that may not be aligned (one mov on
 * x86-64 and arm64 at -O2), where a cast would be undefined behaviour. */
#ifndef SP_UNALIGNED_H
#define SP_UNALIGNED_H

#include <stdint.h>
#include <string.h>

static inline uint64_t load8(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint32_t load4(const char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

#endif
