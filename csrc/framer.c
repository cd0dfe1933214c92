/*
 * trpc's frame scanner in C.  See framer.h for the interface and src/trpc/_framer_py.py for the
 * pure-Python twin, which behaves identically.
 *
 * Theory of operation.  A frame is a 10-byte header (length u32, type u8, flags u8, stream_id
 * u32, big-endian; length counts the payload only) followed by `length` payload bytes.  Calling
 * from Python costs about as much as parsing a few dozen frames in C, so trpc_framer_feed() does
 * all the work for one received chunk in one call:
 *
 *   1. If the previous chunk ended inside a frame, that frame's bytes are in the carry buffer:
 *      top it up from the start of the chunk, header first (the length limit is checked as soon
 *      as the header is complete, before any payload is buffered).  When it completes, it is
 *      frame 0 of the output, and the carry and spare buffers swap, so that its payload stays
 *      readable in the spare buffer while step 3 refills the carry.
 *      If the frame is large (payload >= large_payload), the carry holds only its header: the
 *      bytes of its payload in this chunk are counted, not copied, and left to the caller
 *      (result.collect), which joins the pieces when the frame completes (TRPC_FRAMER_COLLECTED).
 *   2. Scan the rest of the chunk in place: write each complete frame's type, flags, stream id
 *      and payload offsets into the output columns, and its payload into the struct format.
 *   3. Copy the trailing incomplete frame, if any, into the carry buffer; of a large frame, only
 *      the header (its payload bytes are left to the caller, as in step 1).
 *
 * Why large payloads are left to the caller: the payload handed out must be a fresh Python bytes
 * object, and fresh buffers of a megabyte are expensive (the kernel faults their pages in as
 * they are first touched, several times the cost of copying into them).  Carrying a large frame
 * in C meant growing the carry as the frame arrived (realloc moves and faults), then copying the
 * payload out into that fresh bytes object; the caller joining the pieces of the chunks it holds
 * anyway allocates and copies once.  Small frames are carried: for them a C copy is cheaper than
 * keeping pieces in Python.
 *
 * The carry buffer grows geometrically with the bytes actually received (a header announcing a
 * large payload does not by itself allocate it) up to header + large_payload - 1 (at most
 * header + max_frame_size).  A spare buffer larger than CARRY_KEEP is freed at the next call, so
 * an idle framer holds little memory; with the default large_payload (64 KiB), a framer keeps
 * its two buffers, at most 2 * CARRY_KEEP bytes, and never reallocates them once grown.
 *
 * All arithmetic is on size_t, and a payload length is compared with max_frame_size (< 2**24)
 * before it is added to anything, so hostile lengths near 2**32 cannot overflow.
 */
#include "framer.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#ifndef TRPC_VERSION
#error "TRPC_VERSION must be defined (build_ffi.py sets it from src/trpc/_version.py)"
#endif

#define HEADER_SIZE ((size_t)TRPC_FRAMER_HEADER_SIZE)
/* First allocation of the carry buffer: a header plus a typical small frame. */
#define CARRY_MIN ((size_t)256)
/* A spare buffer larger than this is released instead of kept for reuse: enough for any frame
 * that is carried with the default large_payload of 64 KiB (src/trpc/_framer_py.py). */
#define CARRY_KEEP (((size_t)1 << 16) + HEADER_SIZE)

struct trpc_framer {
    uint32_t max_frame_size;
    /* Incomplete frames with a payload at least this long are collected by the caller. */
    uint32_t large_payload;
    /* TRPC_FRAMER_OK, or the error status that poisoned the framer. */
    int status;
    /* See trpc_framer_announced(). */
    uint32_t announced;
    /* The incomplete frame (header and the payload received so far; of a large frame, the
     * header only). */
    unsigned char *carry;
    size_t carry_len;
    size_t carry_cap;
    /* 1 while the incomplete frame is large: its payload is in the caller's pieces. */
    int collecting;
    /* Payload bytes of the large frame that the caller holds. */
    size_t collected;
    /* The previous carry buffer: holds the payload of the last frame completed in the carry. */
    unsigned char *spare;
    size_t spare_cap;
    /* The output of the last feed call (see framer.h). */
    trpc_framer_result result;
    size_t capacity;
    uint32_t *columns;
    uint8_t *type_flags;
    char *format;
    /* The run columns (see framer.h). */
    uint32_t *runs;
    uint8_t *run_type_flags;
};

static uint32_t read_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* Make the carry buffer hold at least `needed` bytes of a frame of `frame_size` bytes in total
 * (needed <= frame_size).  Returns 0 when out of memory, leaving the buffer as it was. */
static int carry_reserve(trpc_framer *framer, size_t needed, size_t frame_size)
{
    size_t cap;
    unsigned char *grown;

    if (needed <= framer->carry_cap) {
        return 1;
    }
    cap = framer->carry_cap < CARRY_MIN ? CARRY_MIN : framer->carry_cap;
    while (cap < needed) {
        cap *= 2; /* cannot overflow: needed <= HEADER_SIZE + TRPC_FRAMER_MAX_FRAME_SIZE_LIMIT */
    }
    if (cap > frame_size) {
        cap = frame_size < CARRY_MIN ? CARRY_MIN : frame_size;
    }
    grown = realloc(framer->carry, cap);
    if (grown == NULL) {
        return 0;
    }
    framer->carry = grown;
    framer->carry_cap = cap;
    return 1;
}

static int poison(trpc_framer *framer, int status)
{
    framer->status = status;
    if (status == TRPC_FRAMER_TOO_LARGE) {
        /* Nothing more will be parsed: let the carry go now (the spare buffer may still hold
         * a payload the caller has to read). */
        free(framer->carry);
        framer->carry = NULL;
        framer->carry_len = 0;
        framer->carry_cap = 0;
    }
    return status;
}

const char *trpc_framer_version(void)
{
    return TRPC_VERSION;
}

trpc_framer *trpc_framer_new(uint32_t max_frame_size, uint32_t capacity, uint32_t large_payload)
{
    trpc_framer *framer;

    if (max_frame_size > TRPC_FRAMER_MAX_FRAME_SIZE_LIMIT || capacity == 0 ||
        capacity > TRPC_FRAMER_MAX_CAPACITY || large_payload == 0) {
        return NULL;
    }
    framer = calloc(1, sizeof(*framer));
    if (framer == NULL) {
        return NULL;
    }
    framer->max_frame_size = max_frame_size;
    framer->large_payload = large_payload;
    framer->capacity = capacity;
    /* calloc: the caller may read the output before the first call. */
    framer->columns = calloc(3 * (size_t)capacity, sizeof(uint32_t));
    framer->type_flags = calloc(2 * (size_t)capacity, 1);
    framer->format = calloc((size_t)capacity * TRPC_FRAMER_FORMAT_PER_FRAME + 2, 1);
    framer->runs = calloc(3 * (size_t)capacity, sizeof(uint32_t));
    framer->run_type_flags = calloc(2 * (size_t)capacity, 1);
    if (framer->columns == NULL || framer->type_flags == NULL || framer->format == NULL ||
        framer->runs == NULL || framer->run_type_flags == NULL) {
        trpc_framer_free(framer);
        return NULL;
    }
    return framer;
}

void trpc_framer_free(trpc_framer *framer)
{
    if (framer != NULL) {
        free(framer->carry);
        free(framer->spare);
        free(framer->columns);
        free(framer->type_flags);
        free(framer->format);
        free(framer->runs);
        free(framer->run_type_flags);
        free(framer);
    }
}

/* Append "10x<size>s" to the format at `text`; return the end. */
static char *format_payload(char *text, uint32_t size)
{
    char digits[10];
    int count = 0;

    *text++ = '1';
    *text++ = '0';
    *text++ = 'x';
    do {
        digits[count++] = (char)('0' + size % 10);
        size /= 10;
    } while (size != 0);
    while (count > 0) {
        *text++ = digits[--count];
    }
    *text++ = 's';
    return text;
}

/* Every return from trpc_framer_feed() goes through here. */
static int finish(trpc_framer *framer, int status)
{
    /* <= HEADER_SIZE + TRPC_FRAMER_MAX_FRAME_SIZE_LIMIT */
    framer->result.buffered = (uint32_t)(framer->carry_len + framer->collected);
    return status;
}

int trpc_framer_feed(trpc_framer *framer, const char *data, size_t length, size_t start)
{
    const unsigned char *bytes = (const unsigned char *)data;
    trpc_framer_result *result = &framer->result;
    const size_t capacity = framer->capacity;
    uint8_t *types = framer->type_flags;
    uint8_t *flags = types + capacity;
    uint32_t *ids = framer->columns;
    uint32_t *starts = ids + capacity;
    uint32_t *ends = starts + capacity;
    char *format = framer->format;
    uint8_t *run_types = framer->run_type_flags;
    uint8_t *run_flags = run_types + capacity;
    uint32_t *run_ids = framer->runs;
    uint32_t *run_firsts = run_ids + capacity;
    uint32_t *run_ends = run_firsts + capacity;
    size_t pos = start;
    size_t n = 0;
    /* The frame index of the first payload in the format, and the runs found so far; the last
     * run is extended while is_data_run says it is a run of plain DATA frames. */
    size_t first = 0;
    size_t runs = 0;
    int is_data_run = 0;

    memset(result, 0, sizeof(*result));
    if (framer->status != TRPC_FRAMER_OK) {
        return finish(framer, framer->status);
    }
    if (start > length || (uint64_t)length > UINT32_MAX) {
        return finish(framer, TRPC_FRAMER_BAD_ARGUMENT);
    }
    result->consumed = (uint32_t)start;

    /* The payload handed out by the previous call is dead now. */
    if (framer->spare_cap > CARRY_KEEP) {
        free(framer->spare);
        framer->spare = NULL;
        framer->spare_cap = 0;
    }

    /* 1. Top up the carried frame: header first, then check its length, then the payload. */
    if (framer->carry_len > 0) {
        size_t frame_size, take, swap_cap;
        unsigned char *swap;

        if (framer->carry_len < HEADER_SIZE) {
            /* carry_cap >= CARRY_MIN > HEADER_SIZE: step 3 reserved it. */
            take = min_size(HEADER_SIZE - framer->carry_len, length - pos);
            if (take > 0) {
                memcpy(framer->carry + framer->carry_len, bytes + pos, take);
            }
            framer->carry_len += take;
            pos += take;
            result->consumed = (uint32_t)pos;
            if (framer->carry_len < HEADER_SIZE) {
                return finish(framer, 0);
            }
            framer->announced = read_u32(framer->carry);
            if (framer->announced > framer->max_frame_size) {
                return finish(framer, poison(framer, TRPC_FRAMER_TOO_LARGE));
            }
            framer->collecting = framer->announced >= framer->large_payload;
        }
        if (framer->collecting) {
            /* The payload's bytes in data are the caller's to keep: only count them. */
            take = min_size(framer->announced - framer->collected, length - pos);
            framer->collected += take;
            pos += take;
            result->consumed = (uint32_t)pos;
            if (framer->collected < framer->announced) {
                result->collect = (uint32_t)take; /* the rest of data */
                return finish(framer, 0);
            }
            starts[0] = (uint32_t)(pos - take);
            ends[0] = (uint32_t)pos;
            result->carried = TRPC_FRAMER_COLLECTED;
            framer->collecting = 0;
            framer->collected = 0;
        } else {
            frame_size = HEADER_SIZE + framer->announced;
            take = min_size(frame_size - framer->carry_len, length - pos);
            if (!carry_reserve(framer, framer->carry_len + take, frame_size)) {
                return finish(framer, poison(framer, TRPC_FRAMER_NO_MEMORY));
            }
            if (take > 0) {
                memcpy(framer->carry + framer->carry_len, bytes + pos, take);
            }
            framer->carry_len += take;
            pos += take;
            result->consumed = (uint32_t)pos;
            if (framer->carry_len < frame_size) {
                return finish(framer, 0);
            }
            starts[0] = 0;
            ends[0] = 0;
            result->carried = TRPC_FRAMER_CARRIED;
        }
        /* Frame 0 is complete; its header is at the start of the carry. */
        types[0] = framer->carry[4];
        flags[0] = framer->carry[5];
        ids[0] = read_u32(framer->carry + 6);
        n = 1;
        result->frames = 1;
        result->carried_length = framer->announced;
        framer->carry_len = 0;
        if (result->carried == TRPC_FRAMER_CARRIED) {
            /* Keep the payload readable in the spare buffer while the carry fills again. */
            swap = framer->carry;
            framer->carry = framer->spare;
            framer->spare = swap;
            swap_cap = framer->carry_cap;
            framer->carry_cap = framer->spare_cap;
            framer->spare_cap = swap_cap;
        }
    }

    /* 2. Scan the complete frames in place, finding the runs as we go. */
    first = n;
    result->offset = (uint32_t)pos;
    *format++ = '=';
    while (length - pos >= HEADER_SIZE && n < capacity) {
        const unsigned char *header = bytes + pos;
        uint32_t size = read_u32(header);

        if (size > framer->max_frame_size) {
            framer->announced = size;
            result->frames = (uint32_t)n;
            result->runs = (uint32_t)runs;
            result->consumed = (uint32_t)pos;
            result->format_length = (uint32_t)(format - framer->format);
            return finish(framer, poison(framer, TRPC_FRAMER_TOO_LARGE));
        }
        if (length - pos - HEADER_SIZE < size) {
            break;
        }
        types[n] = header[4];
        flags[n] = header[5];
        ids[n] = read_u32(header + 6);
        if (is_data_run && (header[4] | header[5]) == 0 && ids[n] == run_ids[runs - 1]) {
            run_ends[runs - 1] = (uint32_t)(n + 1 - first);
        } else {
            run_types[runs] = header[4];
            run_flags[runs] = header[5];
            run_ids[runs] = ids[n];
            run_firsts[runs] = (uint32_t)(n - first);
            run_ends[runs] = (uint32_t)(n + 1 - first);
            is_data_run = (header[4] | header[5]) == 0;
            runs++;
        }
        /* Both fit in uint32: pos + HEADER_SIZE + size <= length <= UINT32_MAX. */
        starts[n] = (uint32_t)(pos + HEADER_SIZE);
        ends[n] = (uint32_t)(pos + HEADER_SIZE + size);
        format = format_payload(format, size);
        pos += HEADER_SIZE + size;
        n++;
    }
    result->frames = (uint32_t)n;
    result->runs = (uint32_t)runs;
    result->consumed = (uint32_t)pos;
    result->format_length = (uint32_t)(format - framer->format);
    if (n == capacity && length - pos >= HEADER_SIZE) {
        return finish(framer, (int)n); /* the output is full: the caller calls again from pos */
    }

    /* 3. Carry the incomplete frame at the end (its header, if complete, was checked). */
    if (pos < length) {
        size_t rest = length - pos;
        size_t frame_size = rest;

        if (rest >= HEADER_SIZE) {
            framer->announced = read_u32(bytes + pos);
            frame_size = HEADER_SIZE + framer->announced;
            if (framer->announced >= framer->large_payload) {
                /* Carry the header only; the rest of data is the caller's first piece. */
                if (!carry_reserve(framer, HEADER_SIZE, frame_size)) {
                    return finish(framer, poison(framer, TRPC_FRAMER_NO_MEMORY));
                }
                memcpy(framer->carry, bytes + pos, HEADER_SIZE);
                framer->carry_len = HEADER_SIZE;
                framer->collecting = 1;
                framer->collected = rest - HEADER_SIZE;
                result->collect = (uint32_t)framer->collected;
                result->consumed = (uint32_t)length;
                return finish(framer, (int)n);
            }
        }
        if (!carry_reserve(framer, rest, frame_size)) {
            return finish(framer, poison(framer, TRPC_FRAMER_NO_MEMORY));
        }
        memcpy(framer->carry, bytes + pos, rest);
        framer->carry_len = rest;
        result->consumed = (uint32_t)length;
    }
    return finish(framer, (int)n);
}

const trpc_framer_result *trpc_framer_result_of(const trpc_framer *framer)
{
    return &framer->result;
}

const uint32_t *trpc_framer_columns(const trpc_framer *framer)
{
    return framer->columns;
}

const uint8_t *trpc_framer_type_flags(const trpc_framer *framer)
{
    return framer->type_flags;
}

const char *trpc_framer_format(const trpc_framer *framer)
{
    return framer->format;
}

const uint32_t *trpc_framer_runs(const trpc_framer *framer)
{
    return framer->runs;
}

const uint8_t *trpc_framer_run_type_flags(const trpc_framer *framer)
{
    return framer->run_type_flags;
}

const char *trpc_framer_carried(const trpc_framer *framer)
{
    return framer->spare == NULL ? NULL : (const char *)framer->spare + HEADER_SIZE;
}

int trpc_framer_close(trpc_framer *framer)
{
    if (framer->status == TRPC_FRAMER_OK && framer->carry_len > 0) {
        framer->status = TRPC_FRAMER_TRUNCATED;
    }
    return framer->status;
}

size_t trpc_framer_buffered(const trpc_framer *framer)
{
    return framer->carry_len + framer->collected;
}

uint32_t trpc_framer_announced(const trpc_framer *framer)
{
    if (framer->status == TRPC_FRAMER_TOO_LARGE || framer->carry_len >= HEADER_SIZE) {
        return framer->announced;
    }
    return 0;
}
