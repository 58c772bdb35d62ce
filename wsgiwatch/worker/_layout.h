/* The spool layout for _speedups.c. GENERATED from wsgiwatch/spool/layout.py and
 * wsgiwatch/worker/call_state.py by `WSGIWATCH_PURE_PYTHON=1 python -m
 * wsgiwatch.worker.layout_header`:
 * do not edit; tests/worker/test_speedups.py checks that it is current. */
#ifndef WSGIWATCH_LAYOUT_H
#define WSGIWATCH_LAYOUT_H

#define HEADER_SIZE                     256
#define HEADER_MAGIC_OFFSET             0
#define HEADER_MAGIC_LEN                8
#define HEADER_VERSION_OFFSET           8
#define HEADER_VERSION_LEN              2
#define HEADER_HEADER_SIZE_OFFSET       10
#define HEADER_HEADER_SIZE_LEN          2
#define HEADER_PID_OFFSET               12
#define HEADER_PID_LEN                  4
#define HEADER_START_TICKS_OFFSET       16
#define HEADER_START_TICKS_LEN          8
#define HEADER_CREATED_WALL_NS_OFFSET   24
#define HEADER_CREATED_WALL_NS_LEN      8
#define HEADER_CREATED_MONO_NS_OFFSET   32
#define HEADER_CREATED_MONO_NS_LEN      8
#define HEADER_SLOT_COUNT_OFFSET        40
#define HEADER_SLOT_COUNT_LEN           4
#define HEADER_SLOT_SIZE_OFFSET         44
#define HEADER_SLOT_SIZE_LEN            4
#define HEADER_RING_CAPACITY_OFFSET     48
#define HEADER_RING_CAPACITY_LEN        4
#define HEADER_RECORD_SIZE_OFFSET       52
#define HEADER_RECORD_SIZE_LEN          4
#define HEADER_ACCEPT_CAPACITY_OFFSET   56
#define HEADER_ACCEPT_CAPACITY_LEN      4
#define HEADER_ACCEPT_SIZE_OFFSET       60
#define HEADER_ACCEPT_SIZE_LEN          4
#define HEADER_DECLARED_CAPACITY_OFFSET 64
#define HEADER_DECLARED_CAPACITY_LEN    4
#define HEADER_PPID_OFFSET              68
#define HEADER_PPID_LEN                 4
#define FLAG_APP_RAISED                 1
#define FLAG_ARRIVAL_SERVER             128
#define FLAG_ARRIVAL_TCP_INFO           32
#define FLAG_CLIENT_GONE                2
#define FLAG_FILE_WRAPPER               4
#define FLAG_NO_CLOSE_SEEN              64
#define FLAG_PEER_FROM_SOCKET           256
#define FLAG_REUSED_CONNECTION          16
#define FLAG_ROUTE_TEMPLATE             8
#define OFF_ACCEPT_HEAD                 88
#define OFF_DECLARED_CAPACITY           64
#define OFF_FLAGS                       72
#define OFF_IDENTITY_UNTIL              184
#define OFF_READER_CURSOR               112
#define OFF_READER_LOST                 120
#define OFF_RECORDS_LOST_WITH_SPOOL     176
#define OFF_RESERVED                    192
#define OFF_RING_HEAD                   80
#define OFF_SERVER                      128
#define OFF_SLOTS_EXHAUSTED             96
#define OFF_SLOT_HIGH_WATER             76
#define OFF_SPOOLS_LOST                 168
#define OFF_TIMES_REJECTED              160
#define OFF_WRITE_ERRORS                104
#define SOURCE_HOOK                     1
#define SOURCE_MOD_WSGI                 2
#define SOURCE_NONE                     0
#define SLOT_SIZE                       144
#define SLOT_REQUEST_OFFSET             0
#define SLOT_REQUEST_LEN                8
#define SLOT_ENTRY_NS_OFFSET            8
#define SLOT_ENTRY_NS_LEN               8
#define SLOT_ACCEPT_NS_OFFSET           16
#define SLOT_ACCEPT_NS_LEN              8
#define SLOT_ARRIVAL_NS_OFFSET          24
#define SLOT_ARRIVAL_NS_LEN             8
#define SLOT_NATIVE_TID_OFFSET          32
#define SLOT_NATIVE_TID_LEN             4
#define SLOT_PEER_PORT_OFFSET           36
#define SLOT_PEER_PORT_LEN              2
#define SLOT_METHOD_OFFSET              38
#define SLOT_METHOD_LEN                 1
#define SLOT_ACCEPT_SOURCE_OFFSET       39
#define SLOT_ACCEPT_SOURCE_LEN          1
#define SLOT_PEER_OFFSET                40
#define SLOT_PEER_LEN                   40
#define SLOT_ROUTE_OFFSET               80
#define SLOT_ROUTE_LEN                  64
#define RECORD_SIZE                     192
#define RECORD_EXIT_OFFSET              144
#define RECORD_EXIT_LEN                 40
#define EXIT_HEADERS_NS_OFFSET          0
#define EXIT_HEADERS_NS_LEN             8
#define EXIT_EXIT_NS_OFFSET             8
#define EXIT_EXIT_NS_LEN                8
#define EXIT_PROXY_WALL_NS_OFFSET       16
#define EXIT_PROXY_WALL_NS_LEN          8
#define EXIT_BYTES_SENT_OFFSET          24
#define EXIT_BYTES_SENT_LEN             8
#define EXIT_STATUS_OFFSET              32
#define EXIT_STATUS_LEN                 2
#define EXIT_FLAGS_OFFSET               34
#define EXIT_FLAGS_LEN                  2
#define EXIT_SERVER_PORT_OFFSET         36
#define EXIT_SERVER_PORT_LEN            2
#define EXIT_SLOT_OFFSET                38
#define EXIT_SLOT_LEN                   2
#define RECORD_SEQ_OFFSET               184
#define NO_SLOT                         65535
#define INVALID_SEQ                     0xffffffffffffffffu
#define METHOD_OTHER                    0
#define METHOD_GET                      1
#define METHOD_HEAD                     2
#define METHOD_POST                     3
#define METHOD_PUT                      4
#define METHOD_DELETE                   5
#define METHOD_PATCH                    6
#define METHOD_OPTIONS                  7
#define METHOD_CONNECT                  8
#define METHOD_TRACE                    9
#define RECORDED_FLAGS                  65535
#define PROXY_PENDING                   65536
#define EXHAUSTED                       131072
#define FINISHED                        262144
#define TIME_REJECTED                   524288

/* Every name above, for the module's LAYOUT dict (checked by the tests). */
#define LAYOUT_NAMES(X) \
    X(HEADER_SIZE) \
    X(HEADER_MAGIC_OFFSET) \
    X(HEADER_MAGIC_LEN) \
    X(HEADER_VERSION_OFFSET) \
    X(HEADER_VERSION_LEN) \
    X(HEADER_HEADER_SIZE_OFFSET) \
    X(HEADER_HEADER_SIZE_LEN) \
    X(HEADER_PID_OFFSET) \
    X(HEADER_PID_LEN) \
    X(HEADER_START_TICKS_OFFSET) \
    X(HEADER_START_TICKS_LEN) \
    X(HEADER_CREATED_WALL_NS_OFFSET) \
    X(HEADER_CREATED_WALL_NS_LEN) \
    X(HEADER_CREATED_MONO_NS_OFFSET) \
    X(HEADER_CREATED_MONO_NS_LEN) \
    X(HEADER_SLOT_COUNT_OFFSET) \
    X(HEADER_SLOT_COUNT_LEN) \
    X(HEADER_SLOT_SIZE_OFFSET) \
    X(HEADER_SLOT_SIZE_LEN) \
    X(HEADER_RING_CAPACITY_OFFSET) \
    X(HEADER_RING_CAPACITY_LEN) \
    X(HEADER_RECORD_SIZE_OFFSET) \
    X(HEADER_RECORD_SIZE_LEN) \
    X(HEADER_ACCEPT_CAPACITY_OFFSET) \
    X(HEADER_ACCEPT_CAPACITY_LEN) \
    X(HEADER_ACCEPT_SIZE_OFFSET) \
    X(HEADER_ACCEPT_SIZE_LEN) \
    X(HEADER_DECLARED_CAPACITY_OFFSET) \
    X(HEADER_DECLARED_CAPACITY_LEN) \
    X(HEADER_PPID_OFFSET) \
    X(HEADER_PPID_LEN) \
    X(FLAG_APP_RAISED) \
    X(FLAG_ARRIVAL_SERVER) \
    X(FLAG_ARRIVAL_TCP_INFO) \
    X(FLAG_CLIENT_GONE) \
    X(FLAG_FILE_WRAPPER) \
    X(FLAG_NO_CLOSE_SEEN) \
    X(FLAG_PEER_FROM_SOCKET) \
    X(FLAG_REUSED_CONNECTION) \
    X(FLAG_ROUTE_TEMPLATE) \
    X(OFF_ACCEPT_HEAD) \
    X(OFF_DECLARED_CAPACITY) \
    X(OFF_FLAGS) \
    X(OFF_IDENTITY_UNTIL) \
    X(OFF_READER_CURSOR) \
    X(OFF_READER_LOST) \
    X(OFF_RECORDS_LOST_WITH_SPOOL) \
    X(OFF_RESERVED) \
    X(OFF_RING_HEAD) \
    X(OFF_SERVER) \
    X(OFF_SLOTS_EXHAUSTED) \
    X(OFF_SLOT_HIGH_WATER) \
    X(OFF_SPOOLS_LOST) \
    X(OFF_TIMES_REJECTED) \
    X(OFF_WRITE_ERRORS) \
    X(SOURCE_HOOK) \
    X(SOURCE_MOD_WSGI) \
    X(SOURCE_NONE) \
    X(SLOT_SIZE) \
    X(SLOT_REQUEST_OFFSET) \
    X(SLOT_REQUEST_LEN) \
    X(SLOT_ENTRY_NS_OFFSET) \
    X(SLOT_ENTRY_NS_LEN) \
    X(SLOT_ACCEPT_NS_OFFSET) \
    X(SLOT_ACCEPT_NS_LEN) \
    X(SLOT_ARRIVAL_NS_OFFSET) \
    X(SLOT_ARRIVAL_NS_LEN) \
    X(SLOT_NATIVE_TID_OFFSET) \
    X(SLOT_NATIVE_TID_LEN) \
    X(SLOT_PEER_PORT_OFFSET) \
    X(SLOT_PEER_PORT_LEN) \
    X(SLOT_METHOD_OFFSET) \
    X(SLOT_METHOD_LEN) \
    X(SLOT_ACCEPT_SOURCE_OFFSET) \
    X(SLOT_ACCEPT_SOURCE_LEN) \
    X(SLOT_PEER_OFFSET) \
    X(SLOT_PEER_LEN) \
    X(SLOT_ROUTE_OFFSET) \
    X(SLOT_ROUTE_LEN) \
    X(RECORD_SIZE) \
    X(RECORD_EXIT_OFFSET) \
    X(RECORD_EXIT_LEN) \
    X(EXIT_HEADERS_NS_OFFSET) \
    X(EXIT_HEADERS_NS_LEN) \
    X(EXIT_EXIT_NS_OFFSET) \
    X(EXIT_EXIT_NS_LEN) \
    X(EXIT_PROXY_WALL_NS_OFFSET) \
    X(EXIT_PROXY_WALL_NS_LEN) \
    X(EXIT_BYTES_SENT_OFFSET) \
    X(EXIT_BYTES_SENT_LEN) \
    X(EXIT_STATUS_OFFSET) \
    X(EXIT_STATUS_LEN) \
    X(EXIT_FLAGS_OFFSET) \
    X(EXIT_FLAGS_LEN) \
    X(EXIT_SERVER_PORT_OFFSET) \
    X(EXIT_SERVER_PORT_LEN) \
    X(EXIT_SLOT_OFFSET) \
    X(EXIT_SLOT_LEN) \
    X(RECORD_SEQ_OFFSET) \
    X(NO_SLOT) \
    X(INVALID_SEQ) \
    X(METHOD_OTHER) \
    X(METHOD_GET) \
    X(METHOD_HEAD) \
    X(METHOD_POST) \
    X(METHOD_PUT) \
    X(METHOD_DELETE) \
    X(METHOD_PATCH) \
    X(METHOD_OPTIONS) \
    X(METHOD_CONNECT) \
    X(METHOD_TRACE) \
    X(RECORDED_FLAGS) \
    X(PROXY_PENDING) \
    X(EXHAUSTED) \
    X(FINISHED) \
    X(TIME_REJECTED) \

#endif
