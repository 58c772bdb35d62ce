/* The sidecar's batch decoder of finished-request records (optional: the pure-Python twin
 * is wsgiwatch.spool.record_batch.decode_rows; tests/spool/test_batch_decode.py checks
 * that both give the same records from any bytes).
 *
 * decode(record_type, pid, first_seq, data, methods, sources, peers, routes, cache_limit)
 * turns ``len(data) // RECORD_SIZE`` whole ring entries (their stamps already checked by the
 * reader) into ``record_type`` instances (a tuple subclass: wsgiwatch.spool.records.Record),
 * sequence numbers from ``first_seq``. Text fields are looked up in the ``peers`` and
 * ``routes`` dicts (raw bytes -> str) and decoded only when missing, exactly as
 * ``raw.rstrip(b"\0").decode(encoding, "replace")``; a dict at ``cache_limit`` entries is
 * emptied first, as the Python side does. Offsets come from the one layout header.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "../worker/_layout.h"

#define FIELDS 20

static inline uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* The cached str of a NUL-padded text field; a new reference, or NULL on error. */
static PyObject *text(PyObject *cache, const unsigned char *raw, Py_ssize_t size,
                      int ascii, Py_ssize_t limit)
{
    PyObject *key = PyBytes_FromStringAndSize((const char *)raw, size);
    if (key == NULL)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(cache, key);
    if (found != NULL) {
        Py_DECREF(key);
        Py_INCREF(found);
        return found;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    Py_ssize_t len = size;
    while (len > 0 && raw[len - 1] == 0)
        len--;
    PyObject *value = ascii ? PyUnicode_DecodeASCII((const char *)raw, len, "replace")
                            : PyUnicode_DecodeUTF8((const char *)raw, len, "replace");
    if (value == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    if (PyDict_GET_SIZE(cache) >= limit)
        PyDict_Clear(cache);
    int failed = PyDict_SetItem(cache, key, value);
    Py_DECREF(key);
    if (failed) {
        Py_DECREF(value);
        return NULL;
    }
    return value;
}

static PyObject *decode(PyObject *module, PyObject *args)
{
    PyTypeObject *type;
    PyObject *pid, *methods, *sources, *peers, *routes;
    unsigned long long first_seq;
    Py_buffer data;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "O!OKy*O!O!O!O!n", &PyType_Type, &type, &pid, &first_seq,
                          &data, &PyTuple_Type, &methods, &PyTuple_Type, &sources,
                          &PyDict_Type, &peers, &PyDict_Type, &routes, &limit))
        return NULL;
    PyObject *out = NULL;
    if (!PyType_IsSubtype(type, &PyTuple_Type) || PyTuple_GET_SIZE(methods) != 256 ||
        PyTuple_GET_SIZE(sources) != 256 || limit < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "decode: a tuple type, 256 method and source names, a limit >= 1");
        goto done;
    }
    Py_ssize_t count = data.len / RECORD_SIZE;
    out = PyList_New(count);
    if (out == NULL)
        goto done;
    const unsigned char *base = data.buf;
    for (Py_ssize_t k = 0; k < count; k++) {
        const unsigned char *e = base + k * RECORD_SIZE;
        const unsigned char *x = e + RECORD_EXIT_OFFSET;
        PyObject *peer = text(peers, e + SLOT_PEER_OFFSET, SLOT_PEER_LEN, 1, limit);
        PyObject *route = peer == NULL
                              ? NULL
                              : text(routes, e + SLOT_ROUTE_OFFSET, SLOT_ROUTE_LEN, 0, limit);
        if (route == NULL) {
            Py_XDECREF(peer);
            goto fail;
        }
        PyObject *items[FIELDS] = {
            PyLong_FromUnsignedLongLong(first_seq + (unsigned long long)k),
            Py_NewRef(pid),
            PyLong_FromUnsignedLongLong(le(e + SLOT_REQUEST_OFFSET, 8)),
            PyLong_FromUnsignedLongLong(le(e + SLOT_ACCEPT_NS_OFFSET, 8)),
            PyLong_FromUnsignedLongLong(le(e + SLOT_ARRIVAL_NS_OFFSET, 8)),
            PyLong_FromUnsignedLongLong(le(e + SLOT_ENTRY_NS_OFFSET, 8)),
            PyLong_FromUnsignedLongLong(le(x + EXIT_HEADERS_NS_OFFSET, 8)),
            PyLong_FromUnsignedLongLong(le(x + EXIT_EXIT_NS_OFFSET, 8)),
            PyLong_FromUnsignedLongLong(le(x + EXIT_PROXY_WALL_NS_OFFSET, 8)),
            PyLong_FromUnsignedLongLong(le(x + EXIT_BYTES_SENT_OFFSET, 8)),
            PyLong_FromUnsignedLongLong(le(e + SLOT_NATIVE_TID_OFFSET, 4)),
            PyLong_FromUnsignedLongLong(le(x + EXIT_SLOT_OFFSET, 2)),
            PyLong_FromUnsignedLongLong(le(x + EXIT_STATUS_OFFSET, 2)),
            PyLong_FromUnsignedLongLong(le(x + EXIT_FLAGS_OFFSET, 2)),
            PyLong_FromUnsignedLongLong(le(e + SLOT_PEER_PORT_OFFSET, 2)),
            PyLong_FromUnsignedLongLong(le(x + EXIT_SERVER_PORT_OFFSET, 2)),
            Py_NewRef(PyTuple_GET_ITEM(methods, e[SLOT_METHOD_OFFSET])),
            Py_NewRef(PyTuple_GET_ITEM(sources, e[SLOT_ACCEPT_SOURCE_OFFSET])),
            peer,
            route,
        };
        int missing = 0;
        for (int f = 0; f < FIELDS; f++)
            missing |= items[f] == NULL;
        /* All fields exist before the record does: a collection its allocation may start
         * never sees it half filled. */
        PyObject *record = missing ? NULL : type->tp_alloc(type, FIELDS);
        if (record == NULL) {
            for (int f = 0; f < FIELDS; f++)
                Py_XDECREF(items[f]);
            goto fail;
        }
        for (int f = 0; f < FIELDS; f++)
            PyTuple_SET_ITEM(record, f, items[f]);
        PyList_SET_ITEM(out, k, record);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyBuffer_Release(&data);
    return out;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(record_type, pid, first_seq, data, methods, sources, peers, routes, "
     "cache_limit) -> list: whole ring entries as records (see the module's source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "wsgiwatch.spool._batch",
    "The sidecar's batch decoder of spool records (optional; see record_batch.decode_rows).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__batch(void)
{
    return PyModule_Create(&module);
}
