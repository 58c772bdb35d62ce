/* wsgiwatch.kernel._diag: one datagram of an inet_diag dump reply, walked in C.
 *
 * Optional: wsgiwatch/kernel/netlink.py holds the same parser in Python (the reference),
 * used when this module is missing (no compiler at install time), when
 * WSGIWATCH_PURE_PYTHON=1, and for arguments this module does not take (see
 * netlink.parse_inet_diag). tests/kernel/test_diag_accel.py holds the two to the same
 * records and the same errors, on recorded dumps, live dumps and hostile bytes.
 *
 * Why: while a worker is at capacity the sidecar dumps every connection of its listeners
 * (10,000 idle keep-alive ones in benchmarks/sidecar_scale.py) and keeps the few a request
 * can be waiting on. In Python the walk costs about 10 us per message even for the ones it
 * skips; here a skipped message costs a few loads, and only the kept ones become objects
 * (through netlink's make_tcp_socket, so the records are the same class and values).
 *
 * The byte layouts are documented in netlink.py's docstring. Every check below mirrors one
 * there, in the same order, so that malformed input raises the same error, naming the same
 * structure and offset: first the headers of the whole datagram (split_messages), then each
 * message in turn.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "netlink is host-endian and this reads it as little-endian; netlink.py covers others"
#endif

#define SOCK_DIAG_BY_FAMILY 20
#define TCPDIAG_GETSOCK 18
#define NLMSG_ERROR 2
#define NLMSG_DONE 3
#define INET_DIAG_INFO 2
#define MAX_ERRNO 4095
#define PORT_BITMAP_BYTES 8192 /* one bit per port, 0..65535 */

/* Set once by configure(): netlink.make_tcp_socket, netlink.TCP_STATES and the two errors. */
static PyObject *make_socket, *state_names, *parse_error, *netlink_error;

static inline uint32_t
u32_at(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint16_t
u16_at(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static inline int32_t
s32_at(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* KernelParseError(what, detail, offset); always returns -1. */
static int
raise_parse(const char *what, Py_ssize_t offset, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    PyObject *detail = PyUnicode_FromFormatV(format, args);
    va_end(args);
    if (detail == NULL)
        return -1;
    PyObject *exc = PyObject_CallFunction(parse_error, "sOn", what, detail, offset);
    Py_DECREF(detail);
    if (exc != NULL) {
        PyErr_SetObject(parse_error, exc);
        Py_DECREF(exc);
    }
    return -1;
}

/* A non-zero status of NLMSG_DONE or NLMSG_ERROR: NetlinkError, or KernelParseError when it
 * is not a negative errno (netlink._errno_of). Always returns -1. */
static int
raise_status(int32_t status, const char *what, const char *context, Py_ssize_t offset)
{
    if (!(-MAX_ERRNO <= status && status < 0))
        return raise_parse(what, offset, "status %d is not a negative errno", (int)status);
    PyObject *exc = PyObject_CallFunction(netlink_error, "is", (int)-status, context);
    if (exc != NULL) {
        PyErr_SetObject(netlink_error, exc);
        Py_DECREF(exc);
    }
    return -1;
}

/* netlink.split_messages: validate every header up to NLMSG_DONE; raise what it raises.
 * Sets *stop_at to where the messages to parse end (NLMSG_DONE's offset, or end). */
static int
check_headers(const uint8_t *b, Py_ssize_t end, int any_seq, uint32_t seq, Py_ssize_t *stop_at,
              int *done)
{
    Py_ssize_t off = 0;
    *stop_at = end;
    *done = 0;
    while (off < end) {
        if (end - off < 16)
            return raise_parse("nlmsghdr", off, "%zd bytes left, need 16", end - off);
        uint32_t length = u32_at(b + off);
        uint16_t mtype = u16_at(b + off + 4);
        uint32_t mseq = u32_at(b + off + 8);
        if (length < 16 || (uint64_t)length > (uint64_t)(end - off))
            return raise_parse("nlmsghdr", off, "nlmsg_len %lu, %zd bytes left",
                               (unsigned long)length, end - off);
        if (any_seq || mseq == seq) {
            if (mtype == NLMSG_DONE) {
                if (length >= 20) {
                    int32_t status = s32_at(b + off + 16);
                    if (status)
                        return raise_status(status, "NLMSG_DONE", "sock_diag dump", off);
                }
                *stop_at = off;
                *done = 1;
                return 0;
            }
            if (mtype == NLMSG_ERROR) {
                if (length < 20)
                    return raise_parse("nlmsgerr", off, "nlmsg_len %lu, need 20",
                                       (unsigned long)length);
                int32_t status = s32_at(b + off + 16);
                if (status)
                    return raise_status(status, "nlmsgerr", "sock_diag request", off);
            }
        }
        off += ((Py_ssize_t)length + 3) & ~(Py_ssize_t)3;
    }
    return 0;
}

static PyObject *
address(int family, const uint8_t *raw)
{
    char text[INET6_ADDRSTRLEN];
    if (inet_ntop(family, raw, text, sizeof text) == NULL)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyUnicode_FromString(text);
}

static inline PyObject *
optional_u32(int present, uint32_t value)
{
    if (present)
        return PyLong_FromUnsignedLong(value);
    Py_RETURN_NONE;
}

/* One inet_diag_msg at [start, stop): append its record to out unless filtered or quiet.
 * Returns 0, or -1 with an exception set. */
static int
parse_message(const uint8_t *b, Py_ssize_t start, Py_ssize_t stop, const uint8_t *ports,
              int local_only, int skip_quiet, PyObject *out)
{
    if (stop - start < 72)
        return raise_parse("inet_diag_msg", start, "%zd bytes, need 72", stop - start);
    const uint8_t *m = b + start;
    unsigned family = m[0], state = m[1];
    unsigned sport = ((unsigned)m[4] << 8) | m[5], dport = ((unsigned)m[6] << 8) | m[7];
    if (ports != NULL && !(ports[sport >> 3] & (1u << (sport & 7)))
        && (local_only || !(ports[dport >> 3] & (1u << (dport & 7)))))
        return 0;
    uint32_t rqueue = u32_at(m + 56), wqueue = u32_at(m + 60);
    uint32_t uid = u32_at(m + 64), inode = u32_at(m + 68);
    Py_ssize_t info_at = -1, info_len = -1;
    Py_ssize_t a = start + 72;
    while (a + 4 <= stop) {
        uint16_t alen = u16_at(b + a), atype = u16_at(b + a + 2);
        if (alen < 4 || alen > stop - a)
            return raise_parse("inet_diag attribute", a, "nla_len %u, %zd bytes left in the message",
                               (unsigned)alen, stop - a);
        if (atype == INET_DIAG_INFO) {
            info_at = a + 4;
            info_len = alen - 4;
        }
        a += ((Py_ssize_t)alen + 3) & ~(Py_ssize_t)3;
    }
    int af;
    if (family == 2)
        af = AF_INET;
    else if (family == 10)
        af = AF_INET6;
    else
        return raise_parse("inet_diag_msg", start, "address family %u", family);
    /* tcp_info: unacked (24), sacked (28), last_data_sent (44), last_data_recv (52), each
     * present when the kernel's struct is long enough to hold it (netlink.parse_tcp_info). */
    const uint8_t *info = info_len >= 0 ? b + info_at : b; /* read only when long enough */
    int has_unacked = info_len >= 28, has_sacked = info_len >= 32;
    int has_sent = info_len >= 48, has_recv = info_len >= 56;
    uint32_t unacked = has_unacked ? u32_at(info + 24) : 0;
    uint32_t sacked = has_sacked ? u32_at(info + 28) : 0;
    uint32_t sent = has_sent ? u32_at(info + 44) : 0;
    uint32_t recv = has_recv ? u32_at(info + 52) : 0;
    if (skip_quiet && state == 1 && inode && !rqueue && has_recv && has_sent
        && (recv > sent || (recv == sent && info_len >= 160 && u32_at(info + 156))))
        return 0;

    PyObject *args[14] = {NULL};
    int rc = -1;
    args[0] = PyLong_FromLong(af);
    args[1] = Py_NewRef(PyTuple_GET_ITEM(state_names, state));
    args[2] = address(af, m + 8);
    args[3] = PyLong_FromUnsignedLong(sport);
    args[4] = address(af, m + 24);
    args[5] = PyLong_FromUnsignedLong(dport);
    args[6] = PyLong_FromUnsignedLong(rqueue);
    args[7] = PyLong_FromUnsignedLong(wqueue);
    args[8] = PyLong_FromUnsignedLong(uid);
    args[9] = PyLong_FromUnsignedLong(inode);
    args[10] = optional_u32(has_recv, recv);
    args[11] = optional_u32(has_sent, sent);
    args[12] = optional_u32(has_unacked, unacked);
    args[13] = optional_u32(has_sacked, sacked);
    for (int i = 0; i < 14; i++)
        if (args[i] == NULL)
            goto finally;
    PyObject *sock = PyObject_Vectorcall(make_socket, args, 14, NULL);
    if (sock != NULL) {
        rc = PyList_Append(out, sock);
        Py_DECREF(sock);
    }
finally:
    for (int i = 0; i < 14; i++)
        Py_XDECREF(args[i]);
    return rc;
}

static PyObject *
parse_inet_diag(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (make_socket == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_diag.configure() was not called");
        return NULL;
    }
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "parse_inet_diag(buf, end, seq, port_bitmap, local_only, skip_quiet)");
        return NULL;
    }
    Py_ssize_t end = PyLong_AsSsize_t(args[1]);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    int any_seq = args[2] == Py_None;
    uint32_t seq = 0;
    if (!any_seq) {
        unsigned long value = PyLong_AsUnsignedLong(args[2]);
        if (value == (unsigned long)-1 && PyErr_Occurred())
            return NULL;
        if (value > 0xFFFFFFFFul) {
            PyErr_SetString(PyExc_ValueError, "seq is not a u32");
            return NULL;
        }
        seq = (uint32_t)value;
    }
    int local_only = PyObject_IsTrue(args[4]), skip_quiet = PyObject_IsTrue(args[5]);
    if (local_only < 0 || skip_quiet < 0)
        return NULL;

    Py_buffer view, bitmap = {0};
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = NULL, *result = NULL;
    if (end < 0 || end > view.len) {
        PyErr_SetString(PyExc_ValueError, "end is outside the buffer");
        goto finally;
    }
    if (args[3] != Py_None) {
        if (PyObject_GetBuffer(args[3], &bitmap, PyBUF_SIMPLE) < 0)
            goto finally;
        if (bitmap.len != PORT_BITMAP_BYTES) {
            PyErr_SetString(PyExc_ValueError, "port_bitmap must be 8192 bytes");
            goto finally;
        }
    }
    const uint8_t *b = view.buf;
    Py_ssize_t stop_at;
    int done;
    if (check_headers(b, end, any_seq, seq, &stop_at, &done) < 0)
        goto finally;
    out = PyList_New(0);
    if (out == NULL)
        goto finally;
    const uint8_t *ports = bitmap.obj != NULL ? bitmap.buf : NULL;
    Py_ssize_t off = 0;
    while (off < stop_at) { /* every header here was validated by check_headers */
        uint32_t length = u32_at(b + off);
        uint16_t mtype = u16_at(b + off + 4);
        if ((any_seq || u32_at(b + off + 8) == seq)
            && (mtype == SOCK_DIAG_BY_FAMILY || mtype == TCPDIAG_GETSOCK)
            && parse_message(b, off + 16, off + length, ports, local_only, skip_quiet, out) < 0)
            goto finally;
        off += ((Py_ssize_t)length + 3) & ~(Py_ssize_t)3;
    }
    result = Py_BuildValue("(OO)", out, done ? Py_True : Py_False);
finally:
    Py_XDECREF(out);
    if (bitmap.obj != NULL)
        PyBuffer_Release(&bitmap);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *
configure(PyObject *module, PyObject *args)
{
    PyObject *make, *states, *parse_exc, *netlink_exc;
    if (!PyArg_ParseTuple(args, "OO!OO:configure", &make, &PyTuple_Type, &states, &parse_exc,
                          &netlink_exc))
        return NULL;
    if (PyTuple_GET_SIZE(states) != 256) {
        PyErr_SetString(PyExc_ValueError, "states must name all 256 state bytes");
        return NULL;
    }
    Py_XSETREF(make_socket, Py_NewRef(make));
    Py_XSETREF(state_names, Py_NewRef(states));
    Py_XSETREF(parse_error, Py_NewRef(parse_exc));
    Py_XSETREF(netlink_error, Py_NewRef(netlink_exc));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(make_tcp_socket, states, KernelParseError, NetlinkError): what records and "
     "errors to build."},
    {"parse_inet_diag", (PyCFunction)(void (*)(void))parse_inet_diag, METH_FASTCALL,
     "parse_inet_diag(buf, end, seq, port_bitmap, local_only, skip_quiet) -> (sockets, done)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "wsgiwatch.kernel._diag",
    "inet_diag dump replies parsed in C (netlink.py's parse_inet_diag is the reference)", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__diag(void)
{
    return PyModule_Create(&module_def);
}
