/*
 * trpc._speedups: the CPython extension of trpc (the parts that build or walk Python objects,
 * which the cffi framer cannot).  speedups.c defines the module; cbor.c the codec.
 */
#ifndef TRPC_SPEEDUPS_H
#define TRPC_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* make_encoder(fallback) and make_decoder(fallback), see cbor.c. */
PyObject *trpc_make_encoder(PyObject *module, PyObject *fallback);
PyObject *trpc_make_decoder(PyObject *module, PyObject *fallback);

#endif
