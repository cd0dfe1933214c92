/*
 * trpc's frame scanner in C: the interface, written once.
 *
 * The compiler reads this file through framer.c; build_ffi.py hands the text between the
 * CDEF markers to cffi's ffi.cdef(), so that part must stay plain declarations (no #include,
 * no #if, only integer #defines).
 *
 * One call to trpc_framer_feed() scans a whole received chunk and describes every frame it
 * completes; the Python glue in src/trpc/_framer_c.py slices the payloads out of the chunk it
 * already holds, so complete frames are never copied in C.  Only the incomplete frame at the end
 * of a chunk is copied, into the framer's carry buffer, and topped up by the next chunks -- unless
 * it is large (a payload of at least `large_payload` bytes): then C keeps only its header and
 * tells the caller which bytes of each chunk belong to its payload; the caller keeps those pieces
 * of the chunks it already holds and joins them once, so a large payload is copied once, into
 * the one buffer of its size that the caller hands out.
 * A Python operation costs as much as parsing dozens of frames in C, so the output is shaped
 * for the fewest Python operations per frame: columns that Python iterates directly, and the
 * payload layout as a Python struct format.
 *
 * Statuses, not exceptions: every error is a negative status code and Python raises.
 */
#ifndef TRPC_FRAMER_H
#define TRPC_FRAMER_H

#include <stddef.h>
#include <stdint.h>

/* BEGIN CDEF */

/* Size of a frame header: length u32, type u8, flags u8, stream_id u32, big-endian. */
#define TRPC_FRAMER_HEADER_SIZE 10
/* Largest max_frame_size trpc_framer_new() accepts: 2**24 - 1, as in _framer_py.py. */
#define TRPC_FRAMER_MAX_FRAME_SIZE_LIMIT 16777215
/* Largest capacity (frames per call): 1 Mi frames, 26 MiB of output; more buys nothing. */
#define TRPC_FRAMER_MAX_CAPACITY 1048576
/* Longest format text per frame: "10x" + 8 digits (2**24 - 1) + "s". */
#define TRPC_FRAMER_FORMAT_PER_FRAME 12

/* What trpc_framer_result.carried says about frame 0. */
enum {
    /* Frame 0 was completed in the carry buffer: see trpc_framer_carried(). */
    TRPC_FRAMER_CARRIED = 1,
    /* Frame 0 is a large frame whose payload the caller collected: the pieces it kept (see
     * trpc_framer_result.collect), then data[start:end] from its columns. */
    TRPC_FRAMER_COLLECTED = 2
};

/* Status codes.  A framer that returned an error is poisoned: every later feed/close returns the
 * same status again. */
enum {
    TRPC_FRAMER_OK = 0,
    /* A header announced a payload longer than max_frame_size (see trpc_framer_announced). */
    TRPC_FRAMER_TOO_LARGE = -1,
    /* close() was called with part of a frame buffered. */
    TRPC_FRAMER_TRUNCATED = -2,
    /* The carry buffer could not be grown. */
    TRPC_FRAMER_NO_MEMORY = -3,
    /* A caller bug: start > length or length > UINT32_MAX.  Does not poison the framer. */
    TRPC_FRAMER_BAD_ARGUMENT = -4
};

typedef struct trpc_framer trpc_framer;

/* What the last trpc_framer_feed() call found (trpc_framer_result_of). */
typedef struct {
    /* Frames described: the return value, or on an error, the frames completed before it. */
    uint32_t frames;
    /* Offset in data where the call stopped: `length`, unless the output filled up (then
     * frames == capacity and the caller calls again with start = consumed) or an error. */
    uint32_t consumed;
    /* 0 if every frame lies in data; TRPC_FRAMER_CARRIED if frame 0 was completed in the carry
     * buffer: its payload is the carried_length bytes at trpc_framer_carried(), valid until the
     * next call; TRPC_FRAMER_COLLECTED if frame 0 is a large frame that the caller collected
     * (its payload is carried_length bytes long).  The other frames lie in data. */
    uint32_t carried;
    uint32_t carried_length;
    /* Where in data the first frame scanned in place begins (its header), and the length of
     * the payload format (see trpc_framer_format). */
    uint32_t offset;
    uint32_t format_length;
    /* Bytes now held of the incomplete frame at the end (trpc_framer_buffered()), counting the
     * payload bytes of a large frame that the caller holds. */
    uint32_t buffered;
    /* The last `collect` bytes of data are more of the payload of the incomplete large frame at
     * the end: the caller keeps them (C does not copy them) until the frame completes as frame 0
     * of a later call (carried == TRPC_FRAMER_COLLECTED).  0 if there is none, or if its header
     * ended the chunk. */
    uint32_t collect;
    /* Runs among the frames that lie in data (see trpc_framer_runs). */
    uint32_t runs;
} trpc_framer_result;

/* The trpc version this module was built for (the TRPC_VERSION define). */
const char *trpc_framer_version(void);

/* A new framer that describes up to `capacity` frames per feed call and leaves the payloads
 * of at least `large_payload` bytes of incomplete frames to the caller (see result.collect), or
 * NULL if out of memory or an argument is out of range (max_frame_size <=
 * TRPC_FRAMER_MAX_FRAME_SIZE_LIMIT, 1 <= capacity <= TRPC_FRAMER_MAX_CAPACITY, large_payload >=
 * 1).  Release it with trpc_framer_free(). */
trpc_framer *trpc_framer_new(uint32_t max_frame_size, uint32_t capacity, uint32_t large_payload);
void trpc_framer_free(trpc_framer *framer);

/*
 * Scan data[start:length] (after topping up the carried or collected frame, if any) and describe
 * every frame it completes, in order, in the framer's output, which stays valid until the next
 * call:
 *
 * - Columns (arrays of `capacity` entries; Python turns a column into the values of many
 *   frames with one C-level operation).  For frame i:
 *       trpc_framer_type_flags()[i]             type
 *       trpc_framer_type_flags()[capacity + i]  flags
 *       trpc_framer_columns()[i]                stream_id
 *       trpc_framer_columns()[capacity + i]     start: the payload is data[start:end]
 *       trpc_framer_columns()[2 * capacity + i] end
 *   A payload in data starts at >= TRPC_FRAMER_HEADER_SIZE, since its header precedes it; a
 *   carried frame has start == end == 0, and for a collected frame, data[start:end] is the last
 *   piece of its payload.
 * - trpc_framer_format(): the payloads of the frames that lie in data, as a Python struct
 *   format ("=10x16s10x0s..." for payloads of 16 and 0 bytes) to apply at result.offset:
 *   one Struct(format).unpack_from(data, offset) call slices every payload.
 * - Run columns, for feed_grouped(): the frames that lie in data (all but a carried or collected
 *   frame 0) form result.runs runs, each either a maximal sequence of consecutive frames that
 *   are all type 0 (DATA) with flags 0 on one stream id, or one other frame.  For run k:
 *       trpc_framer_run_type_flags()[k]             type (of every frame in it)
 *       trpc_framer_run_type_flags()[capacity + k]  flags
 *       trpc_framer_runs()[k]                       stream_id
 *       trpc_framer_runs()[capacity + k]            first: index of its first payload in the
 *                                                   tuple that the format unpacks
 *       trpc_framer_runs()[2 * capacity + k]        end: one past its last payload's index
 *   Runs do not look at frame 0 when it is carried or collected, nor at earlier calls: joining
 *   a run to what precedes it is the caller's business.
 *
 * Returns the number of frames described (== capacity: more may follow, call again with
 * start = result.consumed) or a negative status.  Offsets are uint32, so length must be
 * <= UINT32_MAX; the caller splits larger chunks.
 */
int trpc_framer_feed(trpc_framer *framer, const char *data, size_t length, size_t start);

/* The framer's output; the pointers stay the same for the framer's lifetime. */
const trpc_framer_result *trpc_framer_result_of(const trpc_framer *framer);
const uint32_t *trpc_framer_columns(const trpc_framer *framer);
const uint8_t *trpc_framer_type_flags(const trpc_framer *framer);
const char *trpc_framer_format(const trpc_framer *framer);
const char *trpc_framer_carried(const trpc_framer *framer);
const uint32_t *trpc_framer_runs(const trpc_framer *framer);
const uint8_t *trpc_framer_run_type_flags(const trpc_framer *framer);

/* The peer sent EOF: TRPC_FRAMER_TRUNCATED if part of a frame is buffered, else OK (or the
 * poisoning status). */
int trpc_framer_close(trpc_framer *framer);

/* Bytes held of the incomplete frame (0 at a frame boundary and after TOO_LARGE), counting the
 * payload bytes of a large frame that the caller holds. */
size_t trpc_framer_buffered(const trpc_framer *framer);

/* The payload length announced by the oversize header (after TRPC_FRAMER_TOO_LARGE) or by the
 * buffered incomplete frame's header if it is complete; 0 otherwise. */
uint32_t trpc_framer_announced(const trpc_framer *framer);

/* END CDEF */

#endif /* TRPC_FRAMER_H */
