/*
 * CBOR encoding and decoding of plain Python values, in front of cbor2 (part of trpc._speedups,
 * whose module is defined in speedups.c).
 *
 * Theory of operation.  cbor2 is trpc's codec: it knows every CBOR type, the message hooks
 * (tag 27) and all the error cases.  But it is slow on what trpc sends most, small plain
 * values: encoding one cost more than the rest of a streamed message's send path together, and
 * decoding one a large share of its receive path (docs/PERFORMANCE.md has the figures;
 * bench/codec.py measures them).
 *
 * Encoding (make_encoder).  This module encodes
 * exactly the plain types (None, bool, int, float, str, bytes, list, tuple, dict, each of its
 * exact type, not a subclass) to the very bytes cbor2's default encoder writes for them, and
 * hands every other value to cbor2 (the fallback), whole:
 *
 *   - major types 0/1 for ints in [-2**64, 2**64) with the shortest head; larger ints fall back
 *     (cbor2 writes them as bignums, tags 2 and 3);
 *   - floats as 0xfb + IEEE 754 double, except NaN and the infinities, which cbor2 writes as
 *     half-precision specials (0xf9 7e00, 7c00, fc00);
 *   - str as UTF-8 (a str that cannot be encoded, e.g. a lone surrogate, falls back and cbor2
 *     raises its own error); bytes as themselves;
 *   - lists and tuples as definite arrays, dicts as definite maps in insertion order (cbor2's
 *     default, non-canonical order);
 *   - nesting deeper than MAX_DEPTH falls back, so a self-referencing list reaches cbor2, which
 *     reports it.
 *
 * No Python code runs while a value is walked (only exact builtin types are read, with borrowed
 * references, and no hashing or comparison happens), so a container cannot change under the
 * walk.  The output is built in a buffer that starts on the C stack and moves to the heap if it
 * grows, then copied once into the bytes object returned.
 *
 * Decoding (make_decoder).  The input is hostile: it came off the network.  The decoder reads
 * the plain subset, definite lengths only: unsigned and negative ints up to 64-bit arguments,
 * byte and text strings (UTF-8 checked strictly), arrays, maps whose keys are ints, byte or text
 * strings, false, true, null, and 16-, 32- and 64-bit floats.  On anything else (tags,
 * including trpc's messages and bignums; indefinite lengths; undefined and simple values;
 * other map keys; malformed or truncated input; nesting deeper than MAX_DEPTH; bytes after the
 * item) it drops what it built and hands the whole payload to the fallback (cbor2's decoder
 * with trpc's tag hook, which also refuses bytes after the item: a message is exactly one data
 * item), which decodes it or raises cbor2's error.  So the result is always exactly the
 * fallback's.  Every length is checked against the bytes that remain before
 * anything is allocated for it (an array of n items needs at least n bytes, a map 2n), so a
 * hostile length costs nothing.
 *
 * tests/test_codec.py checks both directions against cbor2: byte-for-byte equal encodings
 * (hypothesis over nested values, and the edge values of every head size) and equal decodings of
 * valid, mutated and random payloads.
 */
#include "speedups.h"

#include <stdint.h>
#include <string.h>

/* Deeper values go to cbor2: deep enough for any real message, shallow enough that the C stack
 * (one small frame per level) is never at risk. */
#define MAX_DEPTH 64

/* Bytes kept on the C stack before the buffer moves to the heap: most messages fit. */
#define STACK_BYTES 512

/* ----------------------------------------------------------------------------- encoding */

typedef struct {
    unsigned char *data;
    size_t len;
    size_t cap;
    int on_heap;
} buffer;

/* What a walk step returns: done, or the value is not plain (use cbor2), or a Python error. */
enum { OK = 0, FALLBACK = 1, ERROR = -1 };

static int reserve(buffer *b, size_t extra) {
    size_t need, cap;
    unsigned char *data;
    if (extra <= b->cap - b->len)
        return OK;
    if (extra > PY_SSIZE_T_MAX - b->len) {
        PyErr_NoMemory();
        return ERROR;
    }
    need = b->len + extra;
    cap = b->cap * 2;
    if (cap < need)
        cap = need;
    if (b->on_heap) {
        data = PyMem_Realloc(b->data, cap);
    } else {
        data = PyMem_Malloc(cap);
        if (data != NULL)
            memcpy(data, b->data, b->len);
    }
    if (data == NULL) {
        PyErr_NoMemory();
        return ERROR;
    }
    b->data = data;
    b->cap = cap;
    b->on_heap = 1;
    return OK;
}

/* A head: major type (already shifted into the top 3 bits) and its argument, shortest form. */
static int put_head(buffer *b, unsigned char major, unsigned long long arg) {
    unsigned char *p;
    int n, i;
    if (reserve(b, 9) != OK)
        return ERROR;
    p = b->data + b->len;
    if (arg < 24) {
        p[0] = (unsigned char)(major | arg);
        b->len += 1;
        return OK;
    }
    if (arg <= 0xff) {
        p[0] = major | 24;
        n = 1;
    } else if (arg <= 0xffff) {
        p[0] = major | 25;
        n = 2;
    } else if (arg <= 0xffffffffULL) {
        p[0] = major | 26;
        n = 4;
    } else {
        p[0] = major | 27;
        n = 8;
    }
    for (i = n; i > 0; i--) {
        p[i] = (unsigned char)(arg & 0xff);
        arg >>= 8;
    }
    b->len += (size_t)n + 1;
    return OK;
}

static int put_bytes(buffer *b, unsigned char major, const char *data, Py_ssize_t size) {
    if (put_head(b, major, (unsigned long long)size) != OK || reserve(b, (size_t)size) != OK)
        return ERROR;
    memcpy(b->data + b->len, data, (size_t)size);
    b->len += (size_t)size;
    return OK;
}

static int put_int(buffer *b, PyObject *value) {
    int overflow;
    long long small = PyLong_AsLongLongAndOverflow(value, &overflow);
    unsigned long long big;
    if (overflow == 0) {
        if (small == -1 && PyErr_Occurred())
            return ERROR;
        if (small >= 0)
            return put_head(b, 0x00, (unsigned long long)small);
        /* -1 - small, computed without overflowing at LLONG_MIN */
        return put_head(b, 0x20, (unsigned long long)(-(small + 1)));
    }
    if (overflow > 0) {
        big = PyLong_AsUnsignedLongLong(value);
        if (big == (unsigned long long)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                return ERROR;
            PyErr_Clear();
            return FALLBACK; /* >= 2**64: a bignum, cbor2's job */
        }
        return put_head(b, 0x00, big);
    }
    /* < -2**63: encodable as major type 1 down to -2**64, i.e. -1 - value < 2**64 */
    {
        PyObject *one = PyLong_FromLong(1), *sum, *neg;
        int rc;
        if (one == NULL)
            return ERROR;
        sum = PyNumber_Add(value, one);
        Py_DECREF(one);
        if (sum == NULL)
            return ERROR;
        neg = PyNumber_Negative(sum);
        Py_DECREF(sum);
        if (neg == NULL)
            return ERROR;
        big = PyLong_AsUnsignedLongLong(neg);
        Py_DECREF(neg);
        if (big == (unsigned long long)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                return ERROR;
            PyErr_Clear();
            return FALLBACK;
        }
        rc = put_head(b, 0x20, big);
        return rc;
    }
}

static int put_float(buffer *b, double value) {
    unsigned char *p;
    unsigned long long bits;
    int i;
    if (reserve(b, 9) != OK)
        return ERROR;
    p = b->data + b->len;
    if (Py_IS_NAN(value)) {
        p[0] = 0xf9, p[1] = 0x7e, p[2] = 0x00;
        b->len += 3;
        return OK;
    }
    if (Py_IS_INFINITY(value)) {
        p[0] = 0xf9, p[1] = value > 0 ? 0x7c : 0xfc, p[2] = 0x00;
        b->len += 3;
        return OK;
    }
    memcpy(&bits, &value, sizeof bits);
    p[0] = 0xfb;
    for (i = 8; i > 0; i--) {
        p[i] = (unsigned char)(bits & 0xff);
        bits >>= 8;
    }
    b->len += 9;
    return OK;
}

static int put_value(buffer *b, PyObject *value, int depth) {
    PyTypeObject *type = Py_TYPE(value);
    int rc;
    if (value == Py_None || value == Py_True || value == Py_False) {
        if (reserve(b, 1) != OK)
            return ERROR;
        b->data[b->len++] = value == Py_None ? 0xf6 : value == Py_True ? 0xf5 : 0xf4;
        return OK;
    }
    if (type == &PyLong_Type)
        return put_int(b, value);
    if (type == &PyUnicode_Type) {
        Py_ssize_t size;
        const char *utf8 = PyUnicode_AsUTF8AndSize(value, &size);
        if (utf8 == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
                return ERROR;
            PyErr_Clear();
            return FALLBACK;
        }
        return put_bytes(b, 0x60, utf8, size);
    }
    if (type == &PyBytes_Type)
        return put_bytes(b, 0x40, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    if (type == &PyFloat_Type)
        return put_float(b, PyFloat_AS_DOUBLE(value));
    if (depth >= MAX_DEPTH)
        return FALLBACK;
    if (type == &PyList_Type || type == &PyTuple_Type) {
        Py_ssize_t i, n = Py_SIZE(value);
        PyObject **items = type == &PyList_Type ? ((PyListObject *)value)->ob_item
                                                : ((PyTupleObject *)value)->ob_item;
        if (put_head(b, 0x80, (unsigned long long)n) != OK)
            return ERROR;
        for (i = 0; i < n; i++) {
            rc = put_value(b, items[i], depth + 1);
            if (rc != OK)
                return rc;
        }
        return OK;
    }
    if (type == &PyDict_Type) {
        Py_ssize_t pos = 0;
        PyObject *key, *item;
        if (put_head(b, 0xa0, (unsigned long long)PyDict_GET_SIZE(value)) != OK)
            return ERROR;
        while (PyDict_Next(value, &pos, &key, &item)) {
            rc = put_value(b, key, depth + 1);
            if (rc == OK)
                rc = put_value(b, item, depth + 1);
            if (rc != OK)
                return rc;
        }
        return OK;
    }
    return FALLBACK;
}

/* The encoder: a builtin function whose `self` is the fallback callable (see make_encoder). */
/* A string longer than the stack buffer, alone: written straight into the result (one
 * allocation, one copy), rather than grown on the heap and copied out. */
static PyObject *encode_long_string(unsigned char major, const char *data, Py_ssize_t size) {
    unsigned char head_bytes[9];
    buffer head = {head_bytes, 0, sizeof head_bytes, 0};
    PyObject *result;
    put_head(&head, major, (unsigned long long)size); /* fits: a head is at most 9 bytes */
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)head.len + size);
    if (result != NULL) {
        memcpy(PyBytes_AS_STRING(result), head_bytes, head.len);
        memcpy(PyBytes_AS_STRING(result) + head.len, data, (size_t)size);
    }
    return result;
}

static PyObject *encode(PyObject *fallback, PyObject *value) {
    unsigned char stack[STACK_BYTES];
    buffer b = {stack, 0, STACK_BYTES, 0};
    PyObject *result = NULL;
    int rc;
    if (Py_TYPE(value) == &PyBytes_Type && PyBytes_GET_SIZE(value) > STACK_BYTES)
        return encode_long_string(0x40, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    rc = put_value(&b, value, 0);
    if (rc == OK)
        result = PyBytes_FromStringAndSize((const char *)b.data, (Py_ssize_t)b.len);
    if (b.on_heap)
        PyMem_Free(b.data);
    if (rc == FALLBACK)
        result = PyObject_CallOneArg(fallback, value);
    return result;
}

static PyMethodDef encode_def = {
    "dumps", (PyCFunction)encode, METH_O,
    "dumps(value) -> bytes: value as one CBOR data item, as cbor2 would encode it; values that are "
    "not plain go to the fallback given to make_encoder()."};



/* ----------------------------------------------------------------------------- decoding */

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} reader;

/* One head: major type (0..7, unshifted), additional info and its argument.  FALLBACK for
 * indefinite lengths, reserved values or a truncated head. */
static int get_head(reader *r, int *major, int *info, unsigned long long *arg) {
    const unsigned char *p = r->p;
    unsigned long long value = 0;
    int n, i;
    if (p >= r->end)
        return FALLBACK;
    *major = p[0] >> 5;
    *info = p[0] & 0x1f;
    if (*info < 24) {
        *arg = (unsigned long long)*info;
        r->p = p + 1;
        return OK;
    }
    if (*info > 27)
        return FALLBACK;
    n = 1 << (*info - 24);
    if ((size_t)(r->end - p) < (size_t)n + 1)
        return FALLBACK;
    for (i = 1; i <= n; i++)
        value = (value << 8) | p[i];
    *arg = value;
    r->p = p + 1 + n;
    return OK;
}

static int get_value(reader *r, int depth, PyObject **out);

static int get_container(reader *r, int major, unsigned long long count, int depth, PyObject **out) {
    size_t left = (size_t)(r->end - r->p);
    unsigned long long i;
    PyObject *container, *key, *item;
    int rc;
    if (depth >= MAX_DEPTH)
        return FALLBACK;
    if (major == 4) {
        if (count > left) /* every item takes at least one byte */
            return FALLBACK;
        container = PyList_New((Py_ssize_t)count);
        if (container == NULL)
            return ERROR;
        for (i = 0; i < count; i++) {
            rc = get_value(r, depth + 1, &item);
            if (rc != OK) {
                Py_DECREF(container);
                return rc;
            }
            PyList_SET_ITEM(container, (Py_ssize_t)i, item);
        }
        *out = container;
        return OK;
    }
    if (count > left / 2) /* every pair takes at least two bytes */
        return FALLBACK;
    container = PyDict_New();
    if (container == NULL)
        return ERROR;
    for (i = 0; i < count; i++) {
        /* Keys of the types that hash without running Python code, and that cbor2 also
         * returns as they are (it turns array keys into tuples, for instance). */
        if (r->p >= r->end || (r->p[0] >> 5) > 3) {
            Py_DECREF(container);
            return FALLBACK;
        }
        rc = get_value(r, depth + 1, &key);
        if (rc == OK) {
            rc = get_value(r, depth + 1, &item);
            if (rc == OK) {
                if (PyDict_SetItem(container, key, item) < 0)
                    rc = ERROR;
                Py_DECREF(item);
            }
            Py_DECREF(key);
        }
        if (rc != OK) {
            Py_DECREF(container);
            return rc;
        }
    }
    *out = container;
    return OK;
}

static int get_value(reader *r, int depth, PyObject **out) {
    int major, info;
    unsigned long long arg;
    size_t left;
    PyObject *value;
    if (get_head(r, &major, &info, &arg) != OK)
        return FALLBACK;
    left = (size_t)(r->end - r->p);
    switch (major) {
    case 0:
        value = PyLong_FromUnsignedLongLong(arg);
        break;
    case 1:
        if (arg <= (unsigned long long)LLONG_MAX) {
            value = PyLong_FromLongLong(-1 - (long long)arg);
        } else { /* -1 - arg = ~arg, beyond a long long */
            PyObject *positive = PyLong_FromUnsignedLongLong(arg);
            if (positive == NULL)
                return ERROR;
            value = PyNumber_Invert(positive);
            Py_DECREF(positive);
        }
        break;
    case 2:
    case 3:
        if (arg > left)
            return FALLBACK;
        if (major == 2) {
            value = PyBytes_FromStringAndSize((const char *)r->p, (Py_ssize_t)arg);
        } else {
            value = PyUnicode_DecodeUTF8((const char *)r->p, (Py_ssize_t)arg, NULL);
            if (value == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                PyErr_Clear();
                return FALLBACK;
            }
        }
        r->p += arg;
        break;
    case 4:
    case 5:
        return get_container(r, major, arg, depth, out);
    case 7:
        if (info == 20 || info == 21 || info == 22) {
            value = info == 20 ? Py_False : info == 21 ? Py_True : Py_None;
            Py_INCREF(value);
        } else if (info == 25) {
#if PY_VERSION_HEX >= 0x030b0000
            /* A half-precision NaN other than the usual quiet one (7e00, fe00): what becomes of
             * its payload differs between Python versions (3.11's PyFloat_Unpack2 drops it) and
             * cbor2 versions (6.x keeps it), so cbor2 decides. */
            if ((arg & 0x7c00) == 0x7c00 && (arg & 0x3ff) != 0 && (arg & 0x3ff) != 0x200)
                return FALLBACK;
            unsigned char half[2] = {(unsigned char)(arg >> 8), (unsigned char)arg};
            double number = PyFloat_Unpack2((const char *)half, 0);
            if (number == -1.0 && PyErr_Occurred())
                return ERROR;
            value = PyFloat_FromDouble(number);
#else
            return FALLBACK; /* PyFloat_Unpack2 is public from Python 3.11 */
#endif
        } else if (info == 26) {
            uint32_t bits = (uint32_t)arg;
            float single;
            memcpy(&single, &bits, sizeof single);
            value = PyFloat_FromDouble((double)single);
        } else if (info == 27) {
            double number;
            memcpy(&number, &arg, sizeof number);
            value = PyFloat_FromDouble(number);
        } else {
            return FALLBACK;
        }
        break;
    default: /* 6: tags */
        return FALLBACK;
    }
    if (value == NULL)
        return ERROR;
    *out = value;
    return OK;
}

/* The decoder: a builtin function whose `self` is the fallback callable (see make_decoder). */
static PyObject *decode(PyObject *fallback, PyObject *payload) {
    reader r;
    PyObject *value = NULL;
    int rc;
    if (!PyBytes_CheckExact(payload))
        return PyObject_CallOneArg(fallback, payload);
    r.p = (const unsigned char *)PyBytes_AS_STRING(payload);
    r.end = r.p + PyBytes_GET_SIZE(payload);
    rc = get_value(&r, 0, &value);
    if (rc == OK && r.p == r.end)
        return value;
    if (rc == OK) /* bytes after the item: the fallback says what is wrong */
        Py_DECREF(value);
    else if (rc == ERROR)
        return NULL;
    return PyObject_CallOneArg(fallback, payload);
}

static PyMethodDef decode_def = {
    "loads", (PyCFunction)decode, METH_O,
    "loads(payload) -> value: one CBOR data item decoded as cbor2 would; payloads that are not "
    "plain go to the fallback given to make_decoder()."};

/* make_encoder and make_decoder: the builtin function `def`, bound to `fallback` as its self. */
static PyObject *bind(PyMethodDef *def, PyObject *fallback) {
    if (!PyCallable_Check(fallback)) {
        PyErr_Format(PyExc_TypeError, "the fallback of %s must be callable", def->ml_name);
        return NULL;
    }
    return PyCFunction_New(def, fallback);
}

PyObject *trpc_make_encoder(PyObject *module, PyObject *fallback) {
    (void)module;
    return bind(&encode_def, fallback);
}

PyObject *trpc_make_decoder(PyObject *module, PyObject *fallback) {
    (void)module;
    return bind(&decode_def, fallback);
}
