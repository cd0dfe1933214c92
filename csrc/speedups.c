/*
 * trpc._speedups: the module, and frame_run(), which frames a run of small messages of one
 * stream as DATA frames in one call.
 *
 * Theory of operation.  A server streaming small messages queues each one on the stream's batch
 * (a plain list append, see Connection.open_batch in _protocol.py) and the protocol frames the
 * batch when output is collected.  Framing in Python costs a header pack, two list items and a
 * join per message, more than encoding it; frame_run() writes every frame's 10-byte header
 * (length u32, type u8 = DATA 0, flags u8 = 0, stream id u32, big-endian, as in
 * docs/PROTOCOL.md) and payload into one bytes object, sized exactly, in one pass over the list.
 *
 * It frames payloads in order while their total fits in the credit given and stops before the
 * first that does not: the caller queues the rest to wait for credit.  Every payload must be a
 * bytes object of 1 to max_size bytes (a ValueError or TypeError otherwise, and nothing framed).
 */
#include "speedups.h"

#include <string.h>

#define HEADER_SIZE 10

static void put_u32(unsigned char *p, unsigned long value) {
    p[0] = (unsigned char)(value >> 24);
    p[1] = (unsigned char)(value >> 16);
    p[2] = (unsigned char)(value >> 8);
    p[3] = (unsigned char)value;
}

/* frame_run(payloads: list[bytes], stream_id: int, credit: int, max_size: int)
 *     -> (frames: bytes, count: int, size: int) */
static PyObject *frame_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *payloads, *item, *frames, *result;
    unsigned long stream_id;
    long long credit, max_size, total = 0;
    Py_ssize_t i, count, n;
    unsigned char *out;
    (void)module;
    if (nargs != 4 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "frame_run(payloads: list, stream_id, credit, max_size)");
        return NULL;
    }
    payloads = args[0];
    stream_id = PyLong_AsUnsignedLong(args[1]);
    if (stream_id == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (stream_id > 0xffffffffUL) {
        PyErr_SetString(PyExc_ValueError, "stream id above 2**32 - 1");
        return NULL;
    }
    credit = PyLong_AsLongLong(args[2]);
    max_size = PyLong_AsLongLong(args[3]);
    if ((credit == -1 || max_size == -1) && PyErr_Occurred())
        return NULL;
    if (max_size > 0xffffffffLL)
        max_size = 0xffffffffLL;
    /* Pass 1: check every payload, count those the credit covers.  No Python code runs from
     * here to the end, so the list cannot change between the passes. */
    n = PyList_GET_SIZE(payloads);
    count = n;
    for (i = 0; i < n; i++) {
        Py_ssize_t size;
        item = PyList_GET_ITEM(payloads, i);
        if (!PyBytes_CheckExact(item)) {
            PyErr_Format(PyExc_TypeError, "frame_run: payload %zd is %.100s, not bytes", i, Py_TYPE(item)->tp_name);
            return NULL;
        }
        size = PyBytes_GET_SIZE(item);
        if (size == 0 || size > max_size) {
            PyErr_Format(PyExc_ValueError, "frame_run: payload %zd is %zd bytes, not 1 to %lld", i, size, max_size);
            return NULL;
        }
        if (count == n) {
            if (total + size > credit)
                count = i;
            else
                total += size;
        }
    }
    /* Pass 2: write the frames. */
    frames = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total + HEADER_SIZE * count);
    if (frames == NULL)
        return NULL;
    out = (unsigned char *)PyBytes_AS_STRING(frames);
    for (i = 0; i < count; i++) {
        Py_ssize_t size;
        item = PyList_GET_ITEM(payloads, i);
        size = PyBytes_GET_SIZE(item);
        put_u32(out, (unsigned long)size);
        out[4] = 0; /* DATA */
        out[5] = 0; /* no flags */
        put_u32(out + 6, stream_id);
        memcpy(out + HEADER_SIZE, PyBytes_AS_STRING(item), (size_t)size);
        out += HEADER_SIZE + size;
    }
    result = Py_BuildValue("(NnL)", frames, count, total);
    return result;
}

static PyMethodDef module_methods[] = {
    {"frame_run", (PyCFunction)(void (*)(void))frame_run, METH_FASTCALL,
     "frame_run(payloads, stream_id, credit, max_size) -> (frames, count, size): the first "
     "payloads whose total fits in credit, framed as DATA frames of stream_id in one bytes."},
    {"make_decoder", trpc_make_decoder, METH_O,
     "make_decoder(fallback) -> loads: a CBOR decoder for plain payloads that calls "
     "fallback(payload) for any other payload (cbor2.loads with trpc's hooks)."},
    {"make_encoder", trpc_make_encoder, METH_O,
     "make_encoder(fallback) -> dumps: a CBOR encoder for plain values that calls "
     "fallback(value) for any other value (cbor2.dumps with trpc's hooks)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "trpc._speedups",
    "trpc's CPython extension: the CBOR codec for plain values (csrc/cbor.c) and the DATA-run "
    "framer (csrc/speedups.c).",
    -1, module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL && PyModule_AddStringConstant(module, "__version__", TRPC_VERSION) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
