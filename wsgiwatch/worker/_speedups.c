/* wsgiwatch.worker._speedups: the per-request path of WSGIWatch in C.
 *
 * Optional: wsgiwatch/worker/python_path.py and response.py hold the same logic in Python,
 * used when this module is missing (no compiler at install time), when
 * WSGIWATCH_PURE_PYTHON=1; the Python side also does everything rare here (odd environs,
 * accept sources, streams, file wrappers, first request), handed over by bridge.py.
 * What is here is the common case only: read five environ keys through the Python-side
 * caches, write the scoreboard slot, call the app with a start_response that is a C object,
 * and at close() copy the slot and the exit fields into the ring: a few dict lookups, three
 * clock reads and two memcpy calls.
 *
 * The byte layout comes from _layout.h, generated from wsgiwatch/spool/layout.py; the
 * tests check the header is current and that LAYOUT (every name in it) matches.
 *
 * Concurrency: the ring-write protocol is described in layout.py's docstring. Everything
 * here runs with the GIL held and calls no Python code between claiming a ring entry and
 * publishing it, so ring writes from C need no lock. When this module is loaded, every
 * record of the process goes through spool_commit() (the Python path calls
 * Spool.commit()), so none can interleave with another.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifdef Py_GIL_DISABLED
#error "wsgiwatch.worker._speedups relies on the GIL; free-threaded builds use the Python code"
#endif
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the spool is little-endian and written with native stores"
#endif

#include "_layout.h" /* offsets, sizes, flags: generated from wsgiwatch/spool/layout.py */

static inline uint64_t
monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic_ns()'s clock: a vDSO call */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* This thread's OS id, asked of the kernel once per thread. Forgotten in a forked child,
 * whose one thread has a new id (see after_fork_in_child). */
static _Thread_local uint32_t thread_native_id;

static inline uint32_t
native_id(void)
{
    if (thread_native_id == 0) {
        thread_native_id = (uint32_t)syscall(SYS_gettid);
    }
    return thread_native_id;
}

static void
after_fork_in_child(void)
{
    thread_native_id = 0;
}

static inline void
put_u16(uint8_t *p, uint32_t v)
{
    uint16_t x = (uint16_t)v;
    memcpy(p, &x, 2);
}

static inline void
put_u32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static inline void
put_u64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

/* Bytes into a fixed-size field: cut or zero-padded, as struct's "Ns" does. */
static inline void
put_text(uint8_t *p, size_t field, const void *text, Py_ssize_t length)
{
    size_t n = (size_t)length;
    if (n > field) {
        n = field;
    }
    memcpy(p, text, n);
    memset(p + n, 0, field - n);
}

static inline void
put_field(uint8_t *p, size_t field, PyObject *bytes)
{
    put_text(p, field, PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes));
}

/* --- what bridge.py hands over: the Python side's caches and slow paths ------------------ */
static struct {
    PyObject *ready;           /* dict: spool dir -> SpoolWriter or None */
    PyObject *peers;           /* dict: REMOTE_ADDR -> bytes */
    PyObject *peer_bytes;      /* REMOTE_ADDR -> bytes, filling the cache */
    PyObject *ports;           /* dict: port text -> int */
    PyObject *port_number;     /* port text -> int, filling the cache */
    PyObject *path_bytes;      /* dict: path -> route bytes */
    PyObject *route_for_path;  /* path -> route bytes, filling the cache */
    PyObject *method_codes;    /* dict: method -> code */
    PyObject *odd_keys;        /* environ -> (peer, port, method, peer bytes, route bytes) */
    PyObject *accepted;        /* dict of the accept hook: port -> entry chain */
    PyObject *accept_sources;  /* (environ, peer, port, proxy) -> (accept, arrival, src, flags) */
    PyObject *templates;       /* dict: template -> route bytes */
    PyObject *template_bytes;  /* template -> route bytes, filling the cache */
    PyObject *proxy_wall_ns;   /* environ -> int */
    PyObject *statuses;        /* dict: status line -> code */
    PyObject *status_code;     /* status line -> code, filling the cache */
    PyObject *wrap_other;      /* wrap_other(call, environ, result): streams, files */
    PyObject *python_call;     /* the pure-Python __call__(watch, environ, start_response) */
    PyObject *log_error;       /* log_internal_error(exception): logs once */
    PyObject *check_spool;     /* check_spool(spool, now_ns): retires a lost spool */
    PyObject *connection_port; /* until_ns -> the connection's own peer port, or -1 */
} py;

static PyObject *s_REMOTE_ADDR, *s_REMOTE_PORT, *s_PATH_INFO, *s_SCRIPT_NAME,
    *s_REQUEST_METHOD, *s_SERVER_PORT, *s_ROUTE_KEY, *s_FILE_WRAPPER, *s_MOD_WSGI_START,
    *s_X_REQUEST_START, *s_X_QUEUE_START, *s_fast, *s_first_request, *s_status, *s_empty;

/* ======================================================================================
 * Counter: itertools.count for request and record numbers, readable from C without a call.
 */
typedef struct {
    PyObject_HEAD
    uint64_t value;
} CounterObject;

static PyObject *
counter_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"start", NULL};
    PyObject *start_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O!:Counter", names, &PyLong_Type,
                                     &start_obj)) {
        return NULL;
    }
    unsigned long long start = start_obj ? PyLong_AsUnsignedLongLong(start_obj) : 0;
    if (start == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    CounterObject *self = (CounterObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->value = start;
    }
    return (PyObject *)self;
}

static PyObject *
counter_next(CounterObject *self)
{
    return PyLong_FromUnsignedLongLong(self->value++);
}

static PyTypeObject CounterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgiwatch.worker._speedups.Counter",
    .tp_doc = PyDoc_STR("Counter(start=0): next() gives start, start + 1, ... (GIL-atomic)"),
    .tp_basicsize = sizeof(CounterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = counter_new,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)counter_next,
};

/* ======================================================================================
 * Spool: one process's mapped spool file, as the C path writes it.
 */
typedef struct {
    PyObject_HEAD
    Py_buffer view;           /* of the writer's mmap, held until release() */
    uint8_t *base;            /* NULL once released: nothing is written any more */
    Py_ssize_t record_base;
    uint64_t ring_capacity;
    Py_ssize_t slot_count;
    PyObject *free_slots;     /* the writer's list of free slot indexes */
    PyObject *acquire_slot;   /* the writer's acquire_slot(), for an empty free list */
    CounterObject *requests;  /* the writer's request_numbers */
    CounterObject *records;   /* the writer's record_seq */
    uint64_t next_check_ns;   /* when the next request asks Python whether the file is there */
    volatile sig_atomic_t lost; /* set by the SIGBUS handler: the file was truncated */
} SpoolObject;

/* --- a truncated spool must not kill the worker ----------------------------------------
 * Writing into a shared mapping whose file was truncated (by anyone who can write the
 * spool directory) raises SIGBUS, which kills the process by default. The handler below
 * recognises a fault inside a mapping of ours, maps zeroed anonymous memory over the whole
 * mapping (the faulting store is then retried and lands there, harmlessly) and marks the
 * spool lost; the next request has Python replace it (check_spool). A SIGBUS anywhere else
 * goes to whatever handled it before (faulthandler, or the default: the process dies as it
 * would have without us). The registry is written with the GIL held; the handler only
 * reads it. */
#define MAX_MAPPINGS 8

static struct {
    uintptr_t start; /* 0: a free entry */
    size_t length;
    volatile sig_atomic_t *lost;
} mappings[MAX_MAPPINGS];

static struct sigaction previous_sigbus;
static int sigbus_installed;

static void
previous_handler(int sig, siginfo_t *info, void *context)
{
    if (previous_sigbus.sa_flags & SA_SIGINFO) {
        previous_sigbus.sa_sigaction(sig, info, context);
        return;
    }
    if (previous_sigbus.sa_handler == SIG_DFL ||
        (previous_sigbus.sa_handler == SIG_IGN && info->si_code > 0)) {
        /* A fault cannot be ignored: the default, as if we had never been here. */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    if (previous_sigbus.sa_handler != SIG_IGN) {
        previous_sigbus.sa_handler(sig);
    }
}

static void
on_sigbus(int sig, siginfo_t *info, void *context)
{
    uintptr_t address = (uintptr_t)info->si_addr;
    if (info->si_code > 0) { /* sent by the kernel for a fault, not by kill() */
        for (int i = 0; i < MAX_MAPPINGS; i++) {
            uintptr_t start = __atomic_load_n(&mappings[i].start, __ATOMIC_ACQUIRE);
            if (start != 0 && address >= start && address - start < mappings[i].length) {
                void *zeroes = mmap((void *)start, mappings[i].length, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
                if (zeroes != MAP_FAILED) {
                    *mappings[i].lost = 1;
                    return;
                }
            }
        }
    }
    previous_handler(sig, info, context);
}

/* Watch a mapping; 0 when it could not be (no free entry, or sigaction failed: the
 * process is then as safe as it was without wsgiwatch). */
static int
watch_mapping(void *start, size_t length, volatile sig_atomic_t *lost)
{
    if (!sigbus_installed) {
        struct sigaction action;
        memset(&action, 0, sizeof(action));
        action.sa_sigaction = on_sigbus;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
        sigemptyset(&action.sa_mask);
        if (sigaction(SIGBUS, &action, &previous_sigbus) != 0) {
            return 0;
        }
        sigbus_installed = 1;
    }
    long page = sysconf(_SC_PAGESIZE);
    size_t rounded = (length + (size_t)page - 1) / (size_t)page * (size_t)page;
    for (int i = 0; i < MAX_MAPPINGS; i++) {
        if (mappings[i].start == 0) {
            mappings[i].length = rounded;
            mappings[i].lost = lost;
            __atomic_store_n(&mappings[i].start, (uintptr_t)start, __ATOMIC_RELEASE);
            return 1;
        }
    }
    return 0;
}

static void
unwatch_mapping(void *start)
{
    for (int i = 0; i < MAX_MAPPINGS; i++) {
        if (mappings[i].start == (uintptr_t)start) {
            __atomic_store_n(&mappings[i].start, 0, __ATOMIC_RELEASE);
        }
    }
}

static PyTypeObject SpoolType;

/* Publish one ring entry: the stamp is invalidated, the body written, then the stamp and
 * the ring head set. The fences keep the compiler from reordering these stores (x86 keeps
 * stores in program order); a reader checks the stamp before and after the body. */
static void
spool_commit(SpoolObject *sp, const uint8_t *slot_image, PyObject *route, const uint8_t *exit)
{
    uint64_t seq = sp->records->value++;
    uint8_t *entry = sp->base + sp->record_base + (seq % sp->ring_capacity) * RECORD_SIZE;
    __atomic_store_n((uint64_t *)(entry + RECORD_SEQ_OFFSET), INVALID_SEQ, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(entry, slot_image, SLOT_SIZE);
    if (route != NULL) { /* a framework's template replaces the folded path */
        put_field(entry + SLOT_ROUTE_OFFSET, SLOT_ROUTE_LEN, route);
    }
    memcpy(entry + RECORD_EXIT_OFFSET, exit, RECORD_EXIT_LEN);
    /* entries carry sequence + 1, so zeroed memory never looks written */
    __atomic_store_n((uint64_t *)(entry + RECORD_SEQ_OFFSET), seq + 1, __ATOMIC_RELEASE);
    __atomic_store_n((uint64_t *)(sp->base + OFF_RING_HEAD), seq + 1, __ATOMIC_RELEASE);
}

/* Add one to a header counter (under the GIL: no other writer of the process races). */
static void
spool_count(SpoolObject *sp, Py_ssize_t offset)
{
    if (sp != NULL && sp->base != NULL) {
        uint64_t *counter = (uint64_t *)(sp->base + offset);
        __atomic_store_n(counter, *counter + 1, __ATOMIC_RELAXED);
    }
}

static void
spool_count_error(SpoolObject *sp)
{
    spool_count(sp, OFF_WRITE_ERRORS);
}

/* Something inside wsgiwatch failed: count it and log it (once, in Python), and go on.
 * Returns 0 when the error was handled, -1 when it must propagate: KeyboardInterrupt,
 * SystemExit and the like are not ours to swallow. */
static int
internal_error(SpoolObject *sp)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    spool_count_error(sp);
    if (py.log_error != NULL) {
        PyObject *done = PyObject_CallOneArg(py.log_error, value ? value : Py_None);
        if (done == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(done);
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return 0;
}

/* Have Python look whether the spool file is still there (one stat) and replace it when
 * it is not (spool_check.py); it sets the next time. Returns -1 only for an exception that
 * must propagate. */
static int
spool_check(SpoolObject *sp, uint64_t now_ns)
{
    sp->next_check_ns = UINT64_MAX; /* if Python fails, it is said once, not per request */
    PyObject *checked =
        PyObject_CallFunction(py.check_spool, "OK", (PyObject *)sp, (unsigned long long)now_ns);
    if (checked == NULL) {
        return internal_error(sp);
    }
    Py_DECREF(checked);
    return 0;
}

static PyObject *
spool_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"mm", "record_base", "ring_capacity", "slot_count", "free_slots",
                            "acquire_slot", "request_numbers", "record_seq", NULL};
    PyObject *mm, *free_slots, *acquire_slot;
    PyObject *requests, *records;
    Py_ssize_t record_base, ring_capacity, slot_count;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OnnnO!OO!O!:Spool", names, &mm,
                                     &record_base, &ring_capacity, &slot_count, &PyList_Type,
                                     &free_slots, &acquire_slot, &CounterType, &requests,
                                     &CounterType, &records)) {
        return NULL;
    }
    if (ring_capacity <= 0 || slot_count <= 0 || slot_count >= NO_SLOT ||
        record_base < HEADER_SIZE + slot_count * SLOT_SIZE) {
        PyErr_SetString(PyExc_ValueError, "inconsistent spool geometry");
        return NULL;
    }
    SpoolObject *self = (SpoolObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (PyObject_GetBuffer(mm, &self->view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->base = (uint8_t *)self->view.buf;
    if (self->view.len < record_base + ring_capacity * RECORD_SIZE) {
        PyErr_SetString(PyExc_ValueError, "the mapping is smaller than the spool geometry");
        Py_DECREF(self);
        return NULL;
    }
    self->record_base = record_base;
    self->ring_capacity = (uint64_t)ring_capacity;
    self->slot_count = slot_count;
    self->free_slots = Py_NewRef(free_slots);
    self->acquire_slot = Py_NewRef(acquire_slot);
    self->requests = (CounterObject *)Py_NewRef(requests);
    self->records = (CounterObject *)Py_NewRef(records);
    watch_mapping(self->view.buf, (size_t)self->view.len, &self->lost);
    return (PyObject *)self;
}

static void
spool_release_view(SpoolObject *self)
{
    if (self->base != NULL) {
        unwatch_mapping(self->view.buf);
        self->base = NULL;
        PyBuffer_Release(&self->view);
    }
}

static int
spool_traverse(SpoolObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->free_slots);
    Py_VISIT(self->acquire_slot);
    Py_VISIT(self->requests);
    Py_VISIT(self->records);
    return 0;
}

static int
spool_clear(SpoolObject *self)
{
    Py_CLEAR(self->free_slots);
    Py_CLEAR(self->acquire_slot);
    Py_CLEAR(self->requests);
    Py_CLEAR(self->records);
    return 0;
}

static void
spool_dealloc(SpoolObject *self)
{
    PyObject_GC_UnTrack(self);
    spool_release_view(self);
    spool_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
spool_commit_py(SpoolObject *self, PyObject *body)
{
    Py_buffer view;
    if (PyObject_GetBuffer(body, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (view.len != RECORD_SEQ_OFFSET) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError, "a record body is %d bytes, not %zd",
                            RECORD_SEQ_OFFSET, view.len);
    }
    if (self->base == NULL) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the spool is released");
        return NULL;
    }
    const uint8_t *bytes = (const uint8_t *)view.buf;
    spool_commit(self, bytes, NULL, bytes + RECORD_EXIT_OFFSET);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *
spool_release_py(SpoolObject *self, PyObject *unused)
{
    spool_release_view(self);
    Py_RETURN_NONE;
}

static PyObject *
spool_released(SpoolObject *self, void *closure)
{
    return PyBool_FromLong(self->base == NULL);
}

static PyMethodDef spool_methods[] = {
    {"commit", (PyCFunction)spool_commit_py, METH_O,
     PyDoc_STR("commit(body): publish a 184-byte record body (slot image + exit part)")},
    {"release", (PyCFunction)spool_release_py, METH_NOARGS,
     PyDoc_STR("Let go of the mapping (before it is closed); nothing is written after.")},
    {NULL},
};

static PyObject *
spool_lost(SpoolObject *self, void *closure)
{
    return PyBool_FromLong(self->lost);
}

static PyMemberDef spool_members[] = {
    {"next_check_ns", T_ULONGLONG, offsetof(SpoolObject, next_check_ns), 0,
     PyDoc_STR("when the next request asks check_spool() whether the file is still there")},
    {NULL},
};

static PyGetSetDef spool_getset[] = {
    {"released", (getter)spool_released, NULL, PyDoc_STR("True once release() was called"),
     NULL},
    {"lost", (getter)spool_lost, NULL,
     PyDoc_STR("True once a write faulted (the file was truncated): zeroes are mapped there"),
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SpoolType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgiwatch.worker._speedups.Spool",
    .tp_doc = PyDoc_STR("A worker's mapped spool, as the C path writes it."),
    .tp_basicsize = sizeof(SpoolObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = spool_new,
    .tp_dealloc = (destructor)spool_dealloc,
    .tp_traverse = (traverseproc)spool_traverse,
    .tp_clear = (inquiry)spool_clear,
    .tp_methods = spool_methods,
    .tp_members = spool_members,
    .tp_getset = spool_getset,
};

/* ======================================================================================
 * Call: one request. It is the start_response the app gets (calling it is a vectorcall,
 * no bound-method object), and for list and tuple responses it is also the response: a
 * list holding the app's chunks, so the server iterates and sizes it natively and calls
 * our close(). Streams and file wrappers are handled in Python (wrap_other).
 */
typedef struct {
    PyListObject list;
    vectorcallfunc vectorcall;
    SpoolObject *spool;
    PyObject *environ;               /* until finish() */
    PyObject *server_start_response;
    PyObject *server_write;          /* what the server's start_response returned */
    PyObject *status;                /* the status line the app gave */
    uint64_t headers_ns;
    unsigned long long bytes_sent;
    unsigned int flags;
    uint32_t slot;
    uint8_t image[SLOT_SIZE];        /* the slot image when every slot was busy */
} CallObject;

static PyTypeObject CallType;

static PyObject *call_write(CallObject *self, PyObject *data);
static PyMethodDef call_write_def = {
    "write", (PyCFunction)call_write, METH_O,
    PyDoc_STR("The write() callable of PEP 3333: counted, then the server's."),
};

static PyObject *
call_start_response(CallObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    uint64_t called_ns = monotonic_ns();
    /* The server first, with the arguments exactly as given: when it refuses (headers
     * already sent) and re-raises, what it sent stays what we record. */
    PyObject *write = PyObject_Vectorcall(self->server_start_response, args, nargsf, kwnames);
    if (write == NULL) {
        return NULL;
    }
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *status = NULL;
    if (nargs > 0) {
        status = args[0];
    }
    else if (kwnames != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            if (PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, i), s_status) == 0) {
                status = args[nargs + i];
            }
        }
    }
    if (status != NULL) {
        Py_XSETREF(self->status, Py_NewRef(status));
    }
    self->headers_ns = called_ns;
    Py_XSETREF(self->server_write, write);
    return PyCFunction_New(&call_write_def, (PyObject *)self);
}

static PyObject *
call_write(CallObject *self, PyObject *data)
{
    if (self->server_write == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "write() called before start_response()");
        return NULL;
    }
    Py_ssize_t n = PyBytes_CheckExact(data) ? PyBytes_GET_SIZE(data) : PyObject_Size(data);
    if (n < 0) {
        return NULL;
    }
    self->bytes_sent += (unsigned long long)n;
    return PyObject_CallOneArg(self->server_write, data);
}

/* A small int from a Python cache dict, or from the Python function that fills it. */
static int
cached_int(PyObject *cache, PyObject *fill, PyObject *key, long *out)
{
    PyObject *value = NULL;
    if (PyUnicode_CheckExact(key)) {
        value = PyDict_GetItemWithError(cache, key);
        if (value == NULL && PyErr_Occurred()) {
            return -1;
        }
    }
    if (value != NULL && PyLong_CheckExact(value)) {
        *out = PyLong_AsLong(value);
        return 0;
    }
    PyObject *made = PyObject_CallOneArg(fill, key);
    if (made == NULL) {
        return -1;
    }
    *out = PyLong_AsLong(made);
    Py_DECREF(made);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* Route or peer bytes from a cache dict, or from the function that fills it (new ref). */
static PyObject *
cached_bytes(PyObject *cache, PyObject *fill, PyObject *key)
{
    PyObject *value = PyDict_GetItemWithError(cache, key);
    if (value != NULL && PyBytes_CheckExact(value) && PyBytes_GET_SIZE(value) > 0) {
        return Py_NewRef(value);
    }
    if (value == NULL && PyErr_Occurred()) {
        return NULL;
    }
    value = PyObject_CallOneArg(fill, key);
    if (value != NULL && !PyBytes_CheckExact(value)) {
        Py_DECREF(value);
        PyErr_SetString(PyExc_TypeError, "a route or peer cache gave something not bytes");
        return NULL;
    }
    return value;
}

/* --- the common values without a dict: a server hands over new str objects per request,
 * and each lookup in a cache dict hashes one and touches cache lines of a dict that is cold
 * by then. Plain ASCII is read here; anything else goes the cached Python way. ---------- */

/* The characters of a plain-ASCII str (one byte each), or NULL. */
static inline const char *
ascii_text(PyObject *s, Py_ssize_t *length)
{
    if (!PyUnicode_CheckExact(s)) {
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(s) < 0) { /* before 3.12 a str may still be in the legacy form */
        PyErr_Clear();
        return NULL;
    }
#endif
    if (!PyUnicode_IS_ASCII(s)) {
        return NULL;
    }
    *length = PyUnicode_GET_LENGTH(s);
    return (const char *)PyUnicode_DATA(s);
}

/* The value of 1 to 9 decimal digits, or -1 (anything else: int() may still take it). */
static inline long
digits_value(const char *text, Py_ssize_t length)
{
    if (length < 1 || length > 9) {
        return -1;
    }
    long value = 0;
    for (Py_ssize_t i = 0; i < length; i++) {
        if (text[i] < '0' || text[i] > '9') {
            return -1;
        }
        value = value * 10 + (text[i] - '0');
    }
    return value;
}

/* REMOTE_PORT or SERVER_PORT as the record stores it: port_number()'s int(text) & 0xFFFF. */
static int
port_of(PyObject *text, long *out)
{
    Py_ssize_t length;
    const char *ascii = ascii_text(text, &length);
    long value = ascii != NULL ? digits_value(ascii, length) : -1;
    if (value >= 0) {
        *out = value & 0xFFFF;
        return 0;
    }
    return cached_int(py.ports, py.port_number, text, out);
}

/* The status line's code: status_code()'s int(status[:3]), 0 unless 0 < code < 1000. */
static int
status_of(PyObject *status, long *out)
{
    Py_ssize_t length;
    const char *ascii = ascii_text(status, &length);
    long value = ascii != NULL && length >= 3 ? digits_value(ascii, 3) : -1;
    if (value >= 0) {
        *out = value;
        return 0;
    }
    return cached_int(py.statuses, py.status_code, status, out);
}

/* layout.METHOD_CODES for the usual methods; others are looked up in it. */
static int
method_of(PyObject *method, long *out)
{
    static const struct {
        const char *name;
        long code;
    } known[] = {{"GET", METHOD_GET},         {"HEAD", METHOD_HEAD},
                 {"POST", METHOD_POST},       {"PUT", METHOD_PUT},
                 {"DELETE", METHOD_DELETE},   {"PATCH", METHOD_PATCH},
                 {"OPTIONS", METHOD_OPTIONS}, {"CONNECT", METHOD_CONNECT},
                 {"TRACE", METHOD_TRACE}};
    Py_ssize_t length;
    const char *ascii = ascii_text(method, &length);
    if (ascii != NULL) {
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
            if ((size_t)length == strlen(known[i].name) &&
                memcmp(ascii, known[i].name, (size_t)length) == 0) {
                *out = known[i].code;
                return 0;
            }
        }
    }
    PyObject *code = PyDict_GetItemWithError(py.method_codes, method);
    if (code == NULL) {
        *out = 0;
        return PyErr_Occurred() ? -1 : 0;
    }
    *out = PyLong_AsLong(code);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* Write the record and free the slot. Never raises; an exception already set (the app's,
 * when it raised) is kept as it is. */
static void
call_finish(CallObject *self)
{
    unsigned int flags = self->flags;
    if (flags & FINISHED) {
        return;
    }
    self->flags = flags | FINISHED;
    uint64_t exit_ns = monotonic_ns();
    SpoolObject *sp = self->spool;
    PyObject *environ = self->environ;
    uint32_t slot = self->slot;
    PyObject *saved_type, *saved_value, *saved_tb;
    PyErr_Fetch(&saved_type, &saved_value, &saved_tb);

    PyObject *route = NULL;
    uint64_t proxy_ns = 0;
    long code = 0, server_port = 0;
    /* Everything that can fail comes before the ring entry is claimed. */
    PyObject *template = PyDict_GetItemWithError(environ, s_ROUTE_KEY);
    if (template == NULL && PyErr_Occurred()) {
        goto failed;
    }
    if (template != NULL && PyUnicode_Check(template) && PyUnicode_GET_LENGTH(template) > 0) {
        route = cached_bytes(py.templates, py.template_bytes, template);
        if (route == NULL) {
            goto failed;
        }
        flags |= FLAG_ROUTE_TEMPLATE;
    }
    if (flags & PROXY_PENDING) {
        PyObject *wall = PyObject_CallFunction(py.proxy_wall_ns, "Ok", environ,
                                               (unsigned long)flags);
        if (wall == NULL) {
            goto failed;
        }
        long long value = PyLong_AsLongLong(wall);
        Py_DECREF(wall);
        if (value == -1 && PyErr_Occurred()) {
            goto failed;
        }
        if (value < 0) { /* there, but not believable: counted, not recorded */
            spool_count(sp, OFF_TIMES_REJECTED);
            value = 0;
        }
        proxy_ns = (uint64_t)value;
    }
    if (self->status != NULL && status_of(self->status, &code) < 0) {
        goto failed;
    }
    PyObject *port_text = PyDict_GetItemWithError(environ, s_SERVER_PORT);
    if (port_text == NULL && PyErr_Occurred()) {
        goto failed;
    }
    if (port_text != NULL && port_of(port_text, &server_port) < 0) {
        /* the Python path counts an unhashable port as 0; so does this one */
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
            goto failed;
        }
        PyErr_Clear();
        server_port = 0;
    }
    if (sp->base != NULL) {
        uint8_t exit_part[RECORD_EXIT_LEN];
        put_u64(exit_part + EXIT_HEADERS_NS_OFFSET, self->headers_ns);
        put_u64(exit_part + EXIT_EXIT_NS_OFFSET, exit_ns);
        put_u64(exit_part + EXIT_PROXY_WALL_NS_OFFSET, proxy_ns);
        put_u64(exit_part + EXIT_BYTES_SENT_OFFSET, self->bytes_sent);
        put_u16(exit_part + EXIT_STATUS_OFFSET, (uint32_t)code);
        put_u16(exit_part + EXIT_FLAGS_OFFSET, flags & RECORDED_FLAGS);
        put_u16(exit_part + EXIT_SERVER_PORT_OFFSET, (uint32_t)server_port);
        put_u16(exit_part + EXIT_SLOT_OFFSET, slot);
        const uint8_t *image = slot != NO_SLOT
                                   ? sp->base + HEADER_SIZE + (Py_ssize_t)slot * SLOT_SIZE
                                   : self->image;
        spool_commit(sp, image, route, exit_part);
    }
    goto release;

failed:
    if (internal_error(sp) < 0) {
        /* not ours to swallow, but the app's exception (if any) came first */
        if (saved_type == NULL) {
            PyErr_Fetch(&saved_type, &saved_value, &saved_tb);
        }
        else {
            PyErr_Clear();
        }
    }
release:
    Py_XDECREF(route);
    if (slot != NO_SLOT && sp->base != NULL) {
        /* idle: the slot's request number 0 */
        put_u64(sp->base + HEADER_SIZE + (Py_ssize_t)slot * SLOT_SIZE + SLOT_REQUEST_OFFSET, 0);
        PyObject *index = PyLong_FromUnsignedLong(slot);
        if (index == NULL || PyList_Append(sp->free_slots, index) < 0) {
            PyErr_Clear();
            spool_count_error(sp);
        }
        Py_XDECREF(index);
    }
    /* Drop the environ early: the server may keep this object a while. */
    self->environ = NULL;
    Py_DECREF(environ);
    if (exit_ns >= sp->next_check_ns && sp->base != NULL && !PyErr_Occurred()) {
        /* once a second: is the file still there? */
        if (spool_check(sp, exit_ns) < 0 && saved_type == NULL) {
            PyErr_Fetch(&saved_type, &saved_value, &saved_tb);
        }
        PyErr_Clear();
    }
    PyErr_Restore(saved_type, saved_value, saved_tb);
}

static PyObject *
call_close(CallObject *self, PyObject *unused)
{
    call_finish(self);
    if (PyErr_Occurred()) { /* KeyboardInterrupt and the like, never an internal error */
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The app returned: a list or tuple becomes this object's items; anything else goes to the
 * Python side (wrap_other). Returns a new reference; on an internal error, the record is written and
 * the app's result handed back as it is. */
static PyObject *
call_wrap(CallObject *self, PyObject *result)
{
    PyTypeObject *kind = Py_TYPE(result);
    if (kind == &PyList_Type || kind == &PyTuple_Type) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(result);
        PyObject **items = PySequence_Fast_ITEMS(result);
        unsigned long long sent = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *chunk = items[i];
            Py_ssize_t size = PyBytes_CheckExact(chunk) ? PyBytes_GET_SIZE(chunk)
                                                          : PyObject_Size(chunk);
            if (size < 0) {
                goto failed;
            }
            sent += (unsigned long long)size;
        }
        int extended = n == 1 ? PyList_Append((PyObject *)self, items[0])
                              : PyList_SetSlice((PyObject *)self, 0, 0, result);
        if (extended < 0) {
            goto failed;
        }
        self->bytes_sent += sent;
        self->flags |= EXHAUSTED;
        Py_DECREF(result);
        return Py_NewRef((PyObject *)self);
    }
    PyObject *wrapped =
        PyObject_CallFunctionObjArgs(py.wrap_other, self, self->environ, result, NULL);
    if (wrapped == NULL) {
        goto failed;
    }
    Py_DECREF(result);
    return wrapped;

failed:
    if (internal_error(self->spool) < 0) {
        Py_DECREF(result);
        return NULL;
    }
    call_finish(self);
    if (PyErr_Occurred()) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static int
call_traverse(CallObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->spool);
    Py_VISIT(self->environ);
    Py_VISIT(self->server_start_response);
    Py_VISIT(self->server_write);
    Py_VISIT(self->status);
    return PyList_Type.tp_traverse((PyObject *)self, visit, arg);
}

static int
call_clear(CallObject *self)
{
    Py_CLEAR(self->spool);
    Py_CLEAR(self->environ);
    Py_CLEAR(self->server_start_response);
    Py_CLEAR(self->server_write);
    Py_CLEAR(self->status);
    return PyList_Type.tp_clear((PyObject *)self);
}

/* A server that releases the list response without calling close() (bjoern takes the one
 * item of a one-item list and drops the list, against PEP 3333): the record is written when
 * the response is released, flagged FLAG_NO_CLOSE_SEEN, so the slot is never left taken.
 * Only a response handed to the server (EXHAUSTED) and not yet recorded qualifies. */
static void
call_finalize(CallObject *self)
{
    if ((self->flags & (EXHAUSTED | FINISHED)) != EXHAUSTED || self->spool == NULL) {
        return;
    }
    PyObject *saved_type, *saved_value, *saved_tb;
    PyErr_Fetch(&saved_type, &saved_value, &saved_tb);
    self->flags |= FLAG_NO_CLOSE_SEEN;
    call_finish(self);
    PyErr_Restore(saved_type, saved_value, saved_tb);
}

static void
call_dealloc(CallObject *self)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return; /* resurrected by the finalizer: it lives on */
    }
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->spool);
    Py_CLEAR(self->environ);
    Py_CLEAR(self->server_start_response);
    Py_CLEAR(self->server_write);
    Py_CLEAR(self->status);
    PyList_Type.tp_dealloc((PyObject *)self); /* the items, then tp_free */
}

static PyObject *
call_finish_py(CallObject *self, PyObject *unused)
{
    return call_close(self, unused);
}

static PyMethodDef call_methods[] = {
    {"close", (PyCFunction)call_close, METH_NOARGS,
     PyDoc_STR("The server is done with the response: write the record.")},
    {"finish", (PyCFunction)call_finish_py, METH_NOARGS,
     PyDoc_STR("Write the record and free the slot (once; never raises).")},
    {NULL},
};

static PyMemberDef call_members[] = {
    {"flags", T_UINT, offsetof(CallObject, flags), 0, NULL},
    {"bytes_sent", T_ULONGLONG, offsetof(CallObject, bytes_sent), 0, NULL},
    {"slot", T_UINT, offsetof(CallObject, slot), READONLY, NULL},
    {"headers_ns", T_ULONGLONG, offsetof(CallObject, headers_ns), READONLY, NULL},
    {"status", T_OBJECT, offsetof(CallObject, status), READONLY, NULL},
    {NULL},
};

static PyTypeObject CallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgiwatch.worker._speedups.Call",
    .tp_doc = PyDoc_STR("One request: the app's start_response, and its list response."),
    .tp_basicsize = sizeof(CallObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
                Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_base = &PyList_Type,
    .tp_vectorcall_offset = offsetof(CallObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)call_dealloc,
    .tp_finalize = (destructor)call_finalize,
    .tp_traverse = (traverseproc)call_traverse,
    .tp_clear = (inquiry)call_clear,
    .tp_methods = call_methods,
    .tp_members = call_members,
    .tp_hash = PyObject_HashNotImplemented,
};

/* ======================================================================================
 * Recorder: the base of WSGIWatch. Calling it records the request.
 */
typedef struct {
    PyObject_HEAD
    PyObject *app;
    PyObject *dir;
    int trusted_proxies;
    PyObject *writer;   /* the writer last found in settings.ready[dir], and its Spool */
    SpoolObject *spool;
} RecorderObject;

/* This process's spool for the recorder's directory: a borrowed Spool, Py_None when
 * recording is off or must go the Python way, NULL with an exception set. */
static PyObject *
recorder_spool(RecorderObject *self, PyObject *environ)
{
    PyObject *writer = PyDict_GetItemWithError(py.ready, self->dir);
    if (writer == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        /* first request of this process (or since a fork): opens the spool */
        writer = PyObject_CallMethodOneArg((PyObject *)self, s_first_request, environ);
        if (writer == NULL) {
            return NULL;
        }
        Py_DECREF(writer); /* _first_request keeps it in settings.ready */
    }
    if (writer == self->writer) {
        return self->spool != NULL ? (PyObject *)self->spool : Py_None;
    }
    Py_CLEAR(self->spool);
    Py_XSETREF(self->writer, Py_NewRef(writer));
    if (writer == Py_None) {
        return Py_None;
    }
    PyObject *fast = PyObject_GetAttr(writer, s_fast);
    if (fast == NULL) {
        return NULL;
    }
    if (Py_TYPE(fast) != &SpoolType) {
        Py_DECREF(fast); /* a writer without a C spool: the Python path records */
        return Py_None;
    }
    self->spool = (SpoolObject *)fast;
    return fast;
}

/* An entry of accept_hook.ACCEPTED, as accept_hook.remember() makes it (its ACCEPT, ...,
 * NEXT, ENTRY_LEN and CHAIN_MAX; a test holds these numbers to the Python ones). */
enum { ENTRY_ACCEPT, ENTRY_ARRIVAL, ENTRY_USES, ENTRY_READY, ENTRY_PEER, ENTRY_NEXT, ENTRY_LEN };
#define CHAIN_MAX 4

/* An entry's time or count, or -1 when it is not a non-negative exact int below 2**63
 * (then the entry is not one the hook made: Python judges it). AndOverflow: it adds up
 * the digits itself, where PyLong_AsLongLong converts a clock reading (two digits) through
 * a byte array. */
static inline long long
entry_number(PyObject *entry, int index)
{
    PyObject *value = PyList_GET_ITEM(entry, index);
    if (!PyLong_CheckExact(value)) {
        return -1;
    }
    int overflow;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    return overflow ? -1 : number;
}

/* The int objects ACCEPTED's port keys are: accept_hook.remember() asks port_key() for
 * them, so a request's lookup finds its key by identity, with no int to build, compare
 * (int == int is a rich comparison) or free: about 300 of hook_entry's 820 instructions
 * (callgrind). Made on first use, kept for the process: at most 65,536 small ints. */
static PyObject *port_keys[65536];

/* The key object of a port (borrowed), NULL with an exception if it could not be made. */
static PyObject *
port_key_of(long port)
{
    if (port_keys[port] == NULL) {
        port_keys[port] = PyLong_FromLong(port);
    }
    return port_keys[port];
}

static PyObject *
port_key(PyObject *module, PyObject *value)
{
    if (PyLong_CheckExact(value)) {
        int overflow;
        long port = PyLong_AsLongAndOverflow(value, &overflow);
        if (!overflow && port >= 0 && port <= 65535) {
            return Py_XNewRef(port_key_of(port));
        }
        PyErr_Clear();
    }
    return Py_NewRef(value); /* not a port: itself */
}

/* What find_entry found. */
enum { ENTRY_ERROR = -1, ENTRY_NONE, ENTRY_FOUND, ENTRY_ODD };

/* accept_hook.connection(peer, port) in C: the chain at ACCEPTED[port], walked for the
 * peer's address. Keyed by the port, the lookup builds one int (no tuple) and hashes
 * nothing of the server's fresh REMOTE_ADDR string; the address is compared, not hashed.
 * ENTRY_FOUND sets *entry (borrowed) and its four numbers; ENTRY_ODD when an entry walked
 * is not shaped as the hook makes it, or the peer is not plain ASCII: Python's
 * connection() judges those (it refuses every entry this refuses). */
static int
find_entry(PyObject *peer, long port, PyObject **entry, long long numbers[4])
{
    Py_ssize_t peer_length;
    const char *peer_text = ascii_text(peer, &peer_length);
    if (peer_text == NULL) {
        return ENTRY_ODD;
    }
    if (port < 0 || port > 65535) {
        return ENTRY_ODD;
    }
    PyObject *key = port_key_of(port);
    if (key == NULL) {
        return ENTRY_ERROR;
    }
    PyObject *conn = PyDict_GetItemWithError(py.accepted, key); /* borrowed */
    for (int depth = 0;; depth++) {
        if (conn == NULL || conn == Py_None) {
            return PyErr_Occurred() ? ENTRY_ERROR : ENTRY_NONE;
        }
        if (depth == CHAIN_MAX || !PyList_CheckExact(conn) || PyList_GET_SIZE(conn) != ENTRY_LEN) {
            return ENTRY_ODD;
        }
        Py_ssize_t conn_length;
        const char *conn_text = ascii_text(PyList_GET_ITEM(conn, ENTRY_PEER), &conn_length);
        int odd = conn_text == NULL;
        for (int i = 0; i < 4; i++) { /* ENTRY_ACCEPT .. ENTRY_READY */
            numbers[i] = entry_number(conn, i);
            odd |= numbers[i] < 0;
        }
        if (odd) {
            return ENTRY_ODD;
        }
        if (conn_length == peer_length && memcmp(conn_text, peer_text, (size_t)peer_length) == 0) {
            *entry = conn;
            return ENTRY_FOUND;
        }
        conn = PyList_GET_ITEM(conn, ENTRY_NEXT);
    }
}

/* The accept hook's entry for this connection, read here when it says all there is to
 * say: the server noted when this request was ready (gthread, waitress, cheroot), or it is
 * the connection's first request and TCP_INFO at accept gave its arrival. Anything else
 * (a kept-alive request nobody noted: its socket must be asked; a unix connection, found
 * by its fd; an odd entry) is left to accept_sources.accept_sources, which holds the same
 * rules. Returns 1 when done (no entry: nothing to record), 0 to ask Python, -1 on
 * error. */
static int
hook_entry(PyObject *peer, long port, uint64_t *accept_ns, uint64_t *arrival_ns, long *source,
           unsigned long *flags)
{
    PyObject *conn = NULL;
    long long n[4];
    switch (find_entry(peer, port, &conn, n)) {
    case ENTRY_ERROR:
        return -1;
    case ENTRY_NONE:
        return port ? 1 : 0;
    case ENTRY_ODD:
        return 0;
    }
    long long arrival = n[ENTRY_ARRIVAL];
    unsigned long found_flags = n[ENTRY_USES] ? FLAG_REUSED_CONNECTION : 0;
    if (n[ENTRY_READY]) {
        arrival = n[ENTRY_READY];
        found_flags |= FLAG_ARRIVAL_SERVER;
    }
    else if (!n[ENTRY_USES] && arrival) {
        found_flags |= FLAG_ARRIVAL_TCP_INFO;
    }
    else {
        return 0;
    }
    /* Only whether the connection served a request before matters to anyone: 1, a cached
     * small int like 0, so this allocates nothing and cannot fail. */
    PyList_SetItem(conn, ENTRY_USES, PyLong_FromLong(1));
    PyList_SetItem(conn, ENTRY_READY, PyLong_FromLong(0));
    *accept_ns = (uint64_t)n[ENTRY_ACCEPT];
    *arrival_ns = (uint64_t)arrival;
    *source = SOURCE_HOOK;
    *flags = found_flags;
    return 1;
}

/* accept_hook.note_request_ready(addr) in C, for the servers' hooks (gthread's
 * enqueue_req, waitress's add_task), which call it for every kept-alive request in the
 * server's thread: the Python one walks the chain in bytecode. An addr other than
 * (ASCII str, int), or an odd entry, goes to the Python one. Never raises. */
static PyObject *
note_ready(PyObject *module, PyObject *addr)
{
    if (py.accepted != NULL && PyTuple_CheckExact(addr) && PyTuple_GET_SIZE(addr) >= 2 &&
        PyLong_CheckExact(PyTuple_GET_ITEM(addr, 1))) {
        int overflow;
        long port = PyLong_AsLongAndOverflow(PyTuple_GET_ITEM(addr, 1), &overflow);
        PyObject *conn = NULL;
        long long n[4];
        int found = overflow ? ENTRY_ODD : find_entry(PyTuple_GET_ITEM(addr, 0), port, &conn, n);
        if (found == ENTRY_NONE) {
            Py_RETURN_NONE;
        }
        if (found == ENTRY_FOUND) {
            PyObject *now = PyLong_FromUnsignedLongLong(monotonic_ns());
            if (now != NULL) {
                PyList_SetItem(conn, ENTRY_READY, now); /* steals now */
                Py_RETURN_NONE;
            }
        }
        PyErr_Clear();
    }
    PyObject *hook = PyImport_ImportModule("wsgiwatch.worker.accept_hook");
    PyObject *twin = hook ? PyObject_GetAttrString(hook, "note_request_ready") : NULL;
    PyObject *done = twin ? PyObject_CallOneArg(twin, addr) : NULL; /* addr is one argument */
    Py_XDECREF(twin);
    Py_XDECREF(hook);
    Py_XDECREF(done);
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyObject *
recorder_call(RecorderObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *environ, *start_response;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) > 0) {
        PyErr_SetString(PyExc_TypeError, "a WSGI app takes (environ, start_response)");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "WSGIWatch", 2, 2, &environ, &start_response)) {
        return NULL;
    }
    if (self->app == NULL || self->dir == NULL) {
        PyErr_SetString(PyExc_TypeError, "WSGIWatch.__init__ was not called");
        return NULL;
    }
    if (!PyDict_CheckExact(environ)) { /* an odd environ: the careful Python way */
        return PyObject_CallFunctionObjArgs(py.python_call, self, environ, start_response,
                                            NULL);
    }
    PyObject *spool_obj = recorder_spool(self, environ);
    if (spool_obj == NULL) {
        return NULL;
    }
    if (spool_obj == Py_None) {
        if (self->writer != NULL && self->writer != Py_None) {
            return PyObject_CallFunctionObjArgs(py.python_call, self, environ,
                                                start_response, NULL);
        }
        return PyObject_CallFunctionObjArgs(self->app, environ, start_response, NULL);
    }
    SpoolObject *sp = (SpoolObject *)spool_obj;
    if (sp->lost && sp->base != NULL) {
        /* A write into the spool faulted (the file was truncated): Python retires it, and
         * this request opens the next one. */
        if (spool_check(sp, monotonic_ns()) < 0) {
            return NULL;
        }
        spool_obj = recorder_spool(self, environ);
        if (spool_obj == NULL) {
            return NULL;
        }
        if (spool_obj == Py_None || spool_obj == (PyObject *)sp) { /* none, or still lost */
            return PyObject_CallFunctionObjArgs(self->app, environ, start_response, NULL);
        }
        sp = (SpoolObject *)spool_obj;
    }
    if (sp->base == NULL) { /* released: the process is closing its spool */
        return PyObject_CallFunctionObjArgs(self->app, environ, start_response, NULL);
    }

    CallObject *call = (CallObject *)CallType.tp_alloc(&CallType, 0);
    if (call == NULL) {
        return NULL;
    }
    call->vectorcall = (vectorcallfunc)call_start_response;
    call->spool = (SpoolObject *)Py_NewRef(sp);
    call->environ = Py_NewRef(environ);
    call->server_start_response = Py_NewRef(start_response);
    call->slot = NO_SLOT;

    PyObject *keys = NULL, *peer = NULL, *path = NULL, *peer_b = NULL, *path_b = NULL;
    Py_ssize_t peer_length = 0;
    long port = 0, method = 0;
    uint64_t accept_ns = 0, arrival_ns = 0;
    long source = 0;
    unsigned long flags = 0;

    /* The five keys the slot needs, through the caches. A value of an unexpected type
     * sends the lot to the Python side, which cleans it up (a port that is a number is
     * fine: port_number takes it). */
    PyObject *v_peer = PyDict_GetItemWithError(environ, s_REMOTE_ADDR);
    PyObject *v_port = PyDict_GetItemWithError(environ, s_REMOTE_PORT);
    PyObject *v_path = PyDict_GetItemWithError(environ, s_PATH_INFO);
    PyObject *v_script = PyDict_GetItemWithError(environ, s_SCRIPT_NAME);
    PyObject *v_method = PyDict_GetItemWithError(environ, s_REQUEST_METHOD);
    if (PyErr_Occurred()) {
        goto failed;
    }
#define ODD(v) ((v) != NULL && (v) != Py_None && !PyUnicode_CheckExact(v))
    int odd = ODD(v_peer) || ODD(v_path) || ODD(v_script) || ODD(v_method);
#undef ODD
    if (odd) {
        keys = PyObject_CallOneArg(py.odd_keys, environ);
        if (keys == NULL) {
            goto failed;
        }
        if (!PyTuple_CheckExact(keys) || PyTuple_GET_SIZE(keys) != 5) {
            PyErr_SetString(PyExc_TypeError, "odd_request_keys gave no 5-tuple");
            goto failed;
        }
        peer = Py_NewRef(PyTuple_GET_ITEM(keys, 0));
        port = PyLong_AsLong(PyTuple_GET_ITEM(keys, 1));
        method = PyLong_AsLong(PyTuple_GET_ITEM(keys, 2));
        peer_b = Py_NewRef(PyTuple_GET_ITEM(keys, 3));
        path_b = Py_NewRef(PyTuple_GET_ITEM(keys, 4));
        if (PyErr_Occurred() || !PyBytes_CheckExact(peer_b) || !PyBytes_CheckExact(path_b)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "odd_request_keys gave no bytes");
            }
            goto failed;
        }
    }
    else {
        peer = Py_NewRef(v_peer != NULL && v_peer != Py_None && PyUnicode_GET_LENGTH(v_peer)
                             ? v_peer
                             : s_empty);
        if (v_port != NULL && v_port != Py_None && port_of(v_port, &port) < 0) {
            goto failed;
        }
        if (v_path != NULL && v_path != Py_None) {
            path = Py_NewRef(v_path);
        }
        else {
            path = Py_NewRef(s_empty);
        }
        if (v_script != NULL && v_script != Py_None && PyUnicode_GET_LENGTH(v_script) > 0) {
            /* an app mounted under a prefix: the route is the whole path */
            Py_SETREF(path, PyUnicode_Concat(v_script, path));
            if (path == NULL) {
                goto failed;
            }
        }
        if (v_method != NULL && v_method != Py_None && method_of(v_method, &method) < 0) {
            goto failed;
        }
        if (ascii_text(peer, &peer_length) == NULL) { /* else stored as it is, below */
            peer_b = cached_bytes(py.peers, py.peer_bytes, peer);
            if (peer_b == NULL) {
                goto failed;
            }
        }
        path_b = cached_bytes(py.path_bytes, py.route_for_path, path);
        if (path_b == NULL) {
            goto failed;
        }
    }

    int proxies = self->trusted_proxies;
    int mod_wsgi = PyDict_Contains(environ, s_MOD_WSGI_START);
    int headers = proxies ? (PyDict_Contains(environ, s_X_REQUEST_START) |
                           PyDict_Contains(environ, s_X_QUEUE_START))
                        : 0;
    if (mod_wsgi < 0 || headers < 0) {
        goto failed;
    }
    int hooked = 0;
    if (PyDict_GET_SIZE(py.accepted) > 0 && !mod_wsgi && !headers) {
        hooked = hook_entry(peer, port, &accept_ns, &arrival_ns, &source, &flags);
        if (hooked < 0) {
            goto failed;
        }
    }
    if (!hooked && (PyDict_GET_SIZE(py.accepted) > 0 || mod_wsgi || headers)) {
        PyObject *found =
            PyObject_CallFunction(py.accept_sources, "OOli", environ, peer, port, proxies);
        if (found == NULL) {
            goto failed;
        }
        if (!PyArg_ParseTuple(found, "KKlk", &accept_ns, &arrival_ns, &source, &flags)) {
            Py_DECREF(found);
            goto failed;
        }
        Py_DECREF(found);
        if (flags & TIME_REJECTED) {
            flags &= ~(unsigned long)TIME_REJECTED;
            spool_count(sp, OFF_TIMES_REJECTED);
        }
        if ((int64_t)accept_ns < 0 || (int64_t)arrival_ns < 0) { /* never stored wrapped */
            accept_ns = arrival_ns = 0;
            spool_count(sp, OFF_TIMES_REJECTED);
        }
    }
    /* While the sidecar sees connections waiting in this worker's listen backlog it asks
     * for each connection's own peer port (uWSGI passes none): a header word, 0 otherwise,
     * so the fast path pays one load and no syscall (uwsgi_identity.py). */
    uint64_t identity_until =
        __atomic_load_n((uint64_t *)(sp->base + OFF_IDENTITY_UNTIL), __ATOMIC_RELAXED);
    if (identity_until) {
        PyObject *found = PyObject_CallFunction(py.connection_port, "K", (unsigned long long)identity_until);
        long own_port = found != NULL ? PyLong_AsLong(found) : -1;
        Py_XDECREF(found);
        if (PyErr_Occurred()) {
            goto failed;
        }
        if (own_port >= 0) {
            port = own_port;
            flags |= FLAG_PEER_FROM_SOCKET;
        }
    }
    call->flags = (unsigned int)flags;

    uint8_t image[SLOT_SIZE];
    uint64_t request_number = sp->requests->value++;
    put_u64(image + SLOT_REQUEST_OFFSET, request_number);
    put_u64(image + SLOT_ENTRY_NS_OFFSET, monotonic_ns());
    put_u64(image + SLOT_ACCEPT_NS_OFFSET, accept_ns);
    put_u64(image + SLOT_ARRIVAL_NS_OFFSET, arrival_ns);
    put_u32(image + SLOT_NATIVE_TID_OFFSET, native_id());
    put_u16(image + SLOT_PEER_PORT_OFFSET, (uint32_t)port);
    image[SLOT_METHOD_OFFSET] = (uint8_t)method;
    image[SLOT_ACCEPT_SOURCE_OFFSET] = (uint8_t)source;
    if (peer_b != NULL) {
        put_field(image + SLOT_PEER_OFFSET, SLOT_PEER_LEN, peer_b);
    }
    else { /* plain ASCII: peer_bytes() would encode it to the same bytes */
        put_text(image + SLOT_PEER_OFFSET, SLOT_PEER_LEN, PyUnicode_DATA(peer), peer_length);
    }
    put_field(image + SLOT_ROUTE_OFFSET, SLOT_ROUTE_LEN, path_b);

    /* The slot is taken last, so nothing above can fail while holding it. */
    long slot = NO_SLOT;
    PyListObject *free_slots = (PyListObject *)sp->free_slots;
    Py_ssize_t free_count = Py_SIZE(free_slots);
    PyObject *index;
    if (free_count > 0) { /* list.pop(), without the call */
        index = free_slots->ob_item[free_count - 1];
        Py_SET_SIZE(free_slots, free_count - 1);
    }
    else {
        index = PyObject_CallNoArgs(sp->acquire_slot);
        if (index == NULL) {
            goto failed;
        }
    }
    slot = PyLong_AsLong(index);
    Py_DECREF(index);
    if (slot < 0 || (slot >= sp->slot_count && slot != NO_SLOT)) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "free slot %ld out of range", slot);
        }
        goto failed; /* not a slot we can use, so not one to give back */
    }
    call->slot = (uint32_t)slot;
    if (slot != NO_SLOT) {
        memcpy(sp->base + HEADER_SIZE + slot * SLOT_SIZE, image, SLOT_SIZE);
    }
    else { /* every slot busy (counted): the image waits here for the record */
        memcpy(call->image, image, SLOT_SIZE);
    }
    Py_XDECREF(keys);
    Py_XDECREF(peer);
    Py_XDECREF(path);
    Py_XDECREF(peer_b);
    Py_XDECREF(path_b);

    PyObject *app_args[2] = {environ, (PyObject *)call};
    PyObject *result = PyObject_Vectorcall(self->app, app_args, 2, NULL);
    if (result == NULL) {
        call->flags |= FLAG_APP_RAISED;
        call_finish(call);
        Py_DECREF(call);
        return NULL;
    }
    PyObject *response = call_wrap(call, result);
    Py_DECREF(call);
    return response;

failed:
    Py_XDECREF(keys);
    Py_XDECREF(peer);
    Py_XDECREF(path);
    Py_XDECREF(peer_b);
    Py_XDECREF(path_b);
    call->flags |= FINISHED; /* nothing to write: it never started */
    Py_DECREF(call);
    if (internal_error(sp) < 0) {
        return NULL;
    }
    return PyObject_CallFunctionObjArgs(self->app, environ, start_response, NULL);
}

static int
recorder_traverse(RecorderObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->app);
    Py_VISIT(self->dir);
    Py_VISIT(self->writer);
    Py_VISIT(self->spool);
    return 0;
}

static int
recorder_clear(RecorderObject *self)
{
    Py_CLEAR(self->app);
    Py_CLEAR(self->dir);
    Py_CLEAR(self->writer);
    Py_CLEAR(self->spool);
    return 0;
}

static void
recorder_dealloc(RecorderObject *self)
{
    PyObject_GC_UnTrack(self);
    recorder_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef recorder_members[] = {
    {"app", T_OBJECT_EX, offsetof(RecorderObject, app), 0, PyDoc_STR("the wrapped app")},
    {"_dir", T_OBJECT_EX, offsetof(RecorderObject, dir), 0, NULL},
    {"_trusted_proxies", T_INT, offsetof(RecorderObject, trusted_proxies), 0, NULL},
    {NULL},
};

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsgiwatch.worker._speedups.Recorder",
    .tp_doc = PyDoc_STR("The C base of WSGIWatch: calling it records the request."),
    .tp_basicsize = sizeof(RecorderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_call = (ternaryfunc)recorder_call,
    .tp_dealloc = (destructor)recorder_dealloc,
    .tp_traverse = (traverseproc)recorder_traverse,
    .tp_clear = (inquiry)recorder_clear,
    .tp_members = recorder_members,
};

/* ======================================================================================
 * The module.
 */
static PyObject *
configure(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {
        "ready", "peers", "peer_bytes", "ports", "port_number", "path_bytes",
        "route_for_path", "method_codes", "odd_keys", "accepted", "accept_sources",
        "templates", "template_bytes", "proxy_wall_ns", "statuses", "status_code",
        "wrap_other", "python_call", "log_error", "check_spool", "connection_port", NULL};
    PyObject *v[21];
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        PyErr_SetString(PyExc_RuntimeError, "the C path serves the main interpreter only");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "O!O!OO!OO!OO!OO!OO!OOO!OOOOOO:configure", names, &PyDict_Type, &v[0],
            &PyDict_Type, &v[1], &v[2], &PyDict_Type, &v[3], &v[4], &PyDict_Type, &v[5], &v[6],
            &PyDict_Type, &v[7], &v[8], &PyDict_Type, &v[9], &v[10], &PyDict_Type, &v[11],
            &v[12], &v[13], &PyDict_Type, &v[14], &v[15], &v[16], &v[17], &v[18], &v[19],
            &v[20])) {
        return NULL;
    }
    PyObject **slots[21] = {
        &py.ready, &py.peers, &py.peer_bytes, &py.ports, &py.port_number, &py.path_bytes,
        &py.route_for_path, &py.method_codes, &py.odd_keys, &py.accepted, &py.accept_sources,
        &py.templates, &py.template_bytes, &py.proxy_wall_ns, &py.statuses, &py.status_code,
        &py.wrap_other, &py.python_call, &py.log_error, &py.check_spool, &py.connection_port};
    for (int i = 0; i < 21; i++) {
        Py_XSETREF(*slots[i], Py_NewRef(v[i]));
    }
    Py_RETURN_NONE;
}

/* What the C path stores for one value, for the tests to hold against the Python path. */
static PyObject *
value_of(PyObject *value, int (*parse)(PyObject *, long *))
{
    long out = 0;
    if (py.ports == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    if (parse(value, &out) < 0) {
        return NULL;
    }
    return PyLong_FromLong(out);
}

static PyObject *
port_of_py(PyObject *module, PyObject *value)
{
    return value_of(value, port_of);
}

static PyObject *
status_of_py(PyObject *module, PyObject *value)
{
    return value_of(value, status_of);
}

static PyObject *
method_of_py(PyObject *module, PyObject *value)
{
    return value_of(value, method_of);
}

static PyObject *
peer_of_py(PyObject *module, PyObject *value)
{
    Py_ssize_t length;
    const char *ascii = ascii_text(value, &length);
    if (ascii != NULL) {
        return PyBytes_FromStringAndSize(ascii, length < SLOT_PEER_LEN ? length : SLOT_PEER_LEN);
    }
    if (py.peers == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    PyObject *bytes = cached_bytes(py.peers, py.peer_bytes, value);
    if (bytes != NULL && PyBytes_GET_SIZE(bytes) > SLOT_PEER_LEN) {
        Py_SETREF(bytes, PyBytes_FromStringAndSize(PyBytes_AS_STRING(bytes), SLOT_PEER_LEN));
    }
    return bytes;
}

/* The module keeps its state in C globals (the caches and slow paths of one middleware
 * module), so it serves the main interpreter only; sub-interpreters (mod_wsgi application
 * groups) get the pure-Python path. */
static PyObject *
in_main_interpreter(PyObject *module, PyObject *unused)
{
    return PyBool_FromLong(PyInterpreterState_Get() == PyInterpreterState_Main());
}

static PyMethodDef module_methods[] = {
    {"in_main_interpreter", in_main_interpreter, METH_NOARGS,
     PyDoc_STR("Whether this is the main interpreter, the only one the C path serves.")},
    {"port_of", port_of_py, METH_O, PyDoc_STR("The port number the C path stores")},
    {"status_of", status_of_py, METH_O, PyDoc_STR("The status code the C path stores")},
    {"method_of", method_of_py, METH_O, PyDoc_STR("The method code the C path stores")},
    {"peer_of", peer_of_py, METH_O, PyDoc_STR("The peer bytes the C path stores")},
    {"port_key", port_key, METH_O,
     PyDoc_STR("The int object the C lookup uses for a port (0 to 65535); others as given")},
    {"note_ready", note_ready, METH_O,
     PyDoc_STR("accept_hook.note_request_ready(addr), in C (never raises)")},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     PyDoc_STR("Hand over the Python side's caches and slow paths (bridge.py).")},
    {NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "wsgiwatch.worker._speedups",
    .m_doc = PyDoc_STR("The per-request path of WSGIWatch in C (optional)."),
    .m_size = -1,
    .m_methods = module_methods,
};

/* LAYOUT: every name of _layout.h with its value as compiled, for the tests. */
static int
add_layout(PyObject *module)
{
#define LAYOUT_FIELD(name) {#name, (unsigned long long)(name)},
    static const struct {
        const char *name;
        unsigned long long value;
    } fields[] = {LAYOUT_NAMES(LAYOUT_FIELD)};
#undef LAYOUT_FIELD
    PyObject *layout = PyDict_New();
    if (layout == NULL) {
        return -1;
    }
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        PyObject *value = PyLong_FromUnsignedLongLong(fields[i].value);
        if (value == NULL || PyDict_SetItemString(layout, fields[i].name, value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(layout);
            return -1;
        }
        Py_DECREF(value);
    }
    int added = PyModule_AddObjectRef(module, "LAYOUT", layout);
    Py_DECREF(layout);
    return added;
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    struct {
        PyObject **target;
        const char *text;
    } strings[] = {
        {&s_REMOTE_ADDR, "REMOTE_ADDR"},
        {&s_REMOTE_PORT, "REMOTE_PORT"},
        {&s_PATH_INFO, "PATH_INFO"},
        {&s_SCRIPT_NAME, "SCRIPT_NAME"},
        {&s_REQUEST_METHOD, "REQUEST_METHOD"},
        {&s_SERVER_PORT, "SERVER_PORT"},
        {&s_ROUTE_KEY, "wsgiwatch.route"},
        {&s_FILE_WRAPPER, "wsgi.file_wrapper"},
        {&s_MOD_WSGI_START, "mod_wsgi.request_start"},
        {&s_X_REQUEST_START, "HTTP_X_REQUEST_START"},
        {&s_X_QUEUE_START, "HTTP_X_QUEUE_START"},
        {&s_fast, "fast"},
        {&s_first_request, "_first_request"},
        {&s_status, "status"},
        {&s_empty, ""},
    };
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        if (*strings[i].target == NULL) {
            *strings[i].target = PyUnicode_InternFromString(strings[i].text);
            if (*strings[i].target == NULL) {
                return NULL;
            }
        }
    }
    if (PyType_Ready(&CounterType) < 0 || PyType_Ready(&SpoolType) < 0 ||
        PyType_Ready(&CallType) < 0 || PyType_Ready(&RecorderType) < 0) {
        return NULL;
    }
    if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
        PyErr_SetString(PyExc_ImportError, "pthread_atfork failed");
        return NULL;
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Counter", (PyObject *)&CounterType) < 0 ||
        PyModule_AddObjectRef(module, "Spool", (PyObject *)&SpoolType) < 0 ||
        PyModule_AddObjectRef(module, "Call", (PyObject *)&CallType) < 0 ||
        PyModule_AddObjectRef(module, "Recorder", (PyObject *)&RecorderType) < 0 ||
        add_layout(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
