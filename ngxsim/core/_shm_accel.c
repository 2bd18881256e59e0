/* ngxsim.core._shm_accel: the optional C half of ngxsim.core.shm (see shm.py and ring_writer.py).
 *
 * Built by `pip install .` when a C compiler and Python's headers are there; without them the
 * build skips it (setuptools Extension(optional=True)) and the pure-Python code runs instead,
 * with the same semantics and the same bytes in shared memory.
 *
 * Lock: the zone lock is what shm.py documents -- a per-process thread lock, then flock() on a
 * file descriptor this process opened (the kernel releases it when the holder dies, even by
 * SIGKILL). This file only does the same two steps without the interpreter in between.
 *
 * RingWriter.publish: one event-ring append under that lock, as worker_events' ring.py does it
 * in Python (its docstring has the layout): seq odd, body, tag, seq even, control block, doorbell
 * bump; the futex wake after unlocking, only when a sleeper is counted. An entry may carry an
 * origin (the instance a remote event came from, and its generation there): its length is the
 * byte after the three lengths, 0 for a local event.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>

#include <errno.h>
#include <pthread.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <linux/futex.h>
#include <time.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the shared-memory layout is little endian; the pure-Python path serves other machines"
#endif

/* ------------------------------------------------------------------------------------------ */
/* Lock                                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* Bumped in a child after fork(): a Lock made before is the parent's (its fd's open file
 * description is shared with the parent, so its flock excludes nothing there). */
static unsigned long fork_generation;

static void
after_fork_in_child(void)
{
    fork_generation++;
}

typedef struct {
    PyObject_HEAD
    PyThread_type_lock tlock;
    int fd;
    unsigned long fork_generation;
} LockObject;

static int
lock_acquire(LockObject *self)
{
    if (self->fork_generation != fork_generation) {
        PyErr_SetString(PyExc_RuntimeError, "a zone lock made before fork() gives no exclusion in the child: "
                                            "take zone.lock() again");
        return -1;
    }
    if (!PyThread_acquire_lock(self->tlock, NOWAIT_LOCK)) {
        /* another thread of this process holds it: wait without the GIL (it may need it) */
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->tlock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
    if (flock(self->fd, LOCK_EX | LOCK_NB) == 0)
        return 0;
    int err = errno;
    if (err == EWOULDBLOCK || err == EINTR) {
        /* another process holds it: block in the kernel without the GIL. A signal only
         * restarts the wait (the holder keeps the lock for microseconds); Python runs the
         * handler when this call returns. */
        int rc;
        Py_BEGIN_ALLOW_THREADS
        do {
            rc = flock(self->fd, LOCK_EX);
        } while (rc != 0 && errno == EINTR);
        err = errno;
        Py_END_ALLOW_THREADS
        if (rc == 0)
            return 0;
    }
    PyThread_release_lock(self->tlock);
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

static int
lock_release(LockObject *self)
{
    int rc = flock(self->fd, LOCK_UN);
    int err = errno;
    PyThread_release_lock(self->tlock);
    if (rc != 0) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *
Lock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i:Lock", &fd))
        return NULL;
    LockObject *self = (LockObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = fd;
    self->fork_generation = fork_generation;
    self->tlock = PyThread_allocate_lock();
    if (self->tlock == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void
Lock_dealloc(LockObject *self)
{
    if (self->tlock != NULL)
        PyThread_free_lock(self->tlock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Lock_enter(LockObject *self, PyObject *unused)
{
    if (lock_acquire(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Lock_exit(LockObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (lock_release(self) < 0)
        return NULL;
    Py_RETURN_FALSE;
}

static PyObject *
Lock_fd(LockObject *self, void *closure)
{
    return PyLong_FromLong(self->fd);
}

static PyMethodDef Lock_methods[] = {
    {"__enter__", (PyCFunction)Lock_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Lock_exit, METH_FASTCALL, NULL},
    {"acquire", (PyCFunction)Lock_enter, METH_NOARGS, "Take the zone lock (thread lock, then flock)."},
    {"release", (PyCFunction)(void (*)(void))Lock_exit, METH_FASTCALL, "Release it."},
    {NULL},
};

static PyGetSetDef Lock_getset[] = {
    {"fd", (getter)Lock_fd, NULL, "the flock file descriptor", NULL},
    {NULL},
};

static PyTypeObject LockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ngxsim.core._shm_accel.Lock",
    .tp_doc = "Lock(fd): a zone lock -- a thread lock, then flock(fd) (fd opened by this process).",
    .tp_basicsize = sizeof(LockObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Lock_new,
    .tp_dealloc = (destructor)Lock_dealloc,
    .tp_methods = Lock_methods,
    .tp_getset = Lock_getset,
};

/* ------------------------------------------------------------------------------------------ */
/* RingWriter                                                                                  */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *get_lock;  /* the zone's lock(): asked again after a fork */
    LockObject *lock;
    Py_buffer view;      /* the zone's whole mapping, header included */
    int have_view;
    char *control;       /* newest u64, dropped u64, last publish msec u64 */
    char *entries;
    char *tags;
    uint32_t *word;      /* the doorbell's futex word */
    uint32_t *sleepers;  /* waiters counted on it */
    uint64_t capacity;
    Py_ssize_t entry_size, channel_max, type_max, payload_max, origin_max;
    PyTypeObject *event_type;  /* what read() makes: a tuple subclass without fields of its own */
    PyObject *zone_name;       /* an Event's zone */
} WriterObject;

static PyObject *
Writer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"get_lock", "mapping", "ring_offset", "entries_offset", "tags_offset", "capacity",
                             "channel_max", "type_max", "payload_max", "doorbell_offset", "sleepers_offset",
                             "event_type", "zone_name", "origin_max", NULL};
    PyObject *get_lock, *mapping, *event_type, *zone_name;
    Py_ssize_t ring_off, entries_off, tags_off, capacity, cmax, tmax, pmax, bell_off, sleep_off, omax;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOnnnnnnnnnO!Un:RingWriter", kwlist, &get_lock, &mapping,
                                     &ring_off, &entries_off, &tags_off, &capacity, &cmax, &tmax, &pmax,
                                     &bell_off, &sleep_off, &PyType_Type, &event_type, &zone_name, &omax))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)event_type, &PyTuple_Type)
        || ((PyTypeObject *)event_type)->tp_basicsize != PyTuple_Type.tp_basicsize
        || ((PyTypeObject *)event_type)->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_SetString(PyExc_TypeError, "RingWriter: event_type must be a tuple subclass without fields of its own "
                                         "(a NamedTuple)");
        return NULL;
    }
    if (capacity < 1 || cmax < 0 || cmax > 255 || tmax < 0 || tmax > 255 || pmax < 0 || pmax > 65535 || omax < 0 || omax > 255
        || ring_off < 0 || entries_off < 24 || tags_off < 0 || bell_off < 0 || sleep_off < 0
        || bell_off % 4 || sleep_off % 4 || (ring_off + entries_off) % 8) {
        PyErr_SetString(PyExc_ValueError, "RingWriter: layout out of range");
        return NULL;
    }
    WriterObject *self = (WriterObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(mapping, &self->view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->have_view = 1;
    /* seq, timestamp, lengths (+ 4 bytes: origin length, padding), origin generation, fields */
    self->entry_size = 8 + 16 + 8 + cmax + tmax + pmax + omax;
    Py_ssize_t len = self->view.len;
    if (self->entry_size % 8 || ring_off + entries_off + capacity * self->entry_size > len
        || ring_off + tags_off + capacity * 4 > len || bell_off + 4 > len || sleep_off + 4 > len) {
        PyErr_SetString(PyExc_ValueError, "RingWriter: the layout does not fit the mapping");
        Py_DECREF(self);
        return NULL;
    }
    char *base = (char *)self->view.buf;
    Py_INCREF(get_lock);
    self->get_lock = get_lock;
    self->event_type = (PyTypeObject *)Py_NewRef(event_type);
    self->zone_name = Py_NewRef(zone_name);
    self->control = base + ring_off;
    self->entries = base + ring_off + entries_off;
    self->tags = base + ring_off + tags_off;
    self->word = (uint32_t *)(base + bell_off);
    self->sleepers = (uint32_t *)(base + sleep_off);
    self->capacity = (uint64_t)capacity;
    self->channel_max = cmax;
    self->type_max = tmax;
    self->payload_max = pmax;
    self->origin_max = omax;
    return (PyObject *)self;
}

static void
Writer_dealloc(WriterObject *self)
{
    if (self->have_view)
        PyBuffer_Release(&self->view);
    Py_XDECREF(self->lock);
    Py_XDECREF(self->get_lock);
    Py_XDECREF(self->event_type);
    Py_XDECREF(self->zone_name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* bytes, or an ASCII str (its bytes are its UTF-8), within limit; else 0 and no error */
static int
field(PyObject *obj, Py_ssize_t limit, int required, const char **data, Py_ssize_t *size)
{
    if (PyBytes_CheckExact(obj)) {
        *data = PyBytes_AS_STRING(obj);
        *size = PyBytes_GET_SIZE(obj);
    }
    else if (PyUnicode_CheckExact(obj) && PyUnicode_IS_ASCII(obj)) {
        *data = (const char *)PyUnicode_DATA(obj);
        *size = PyUnicode_GET_LENGTH(obj);
    }
    else
        return 0;
    return *size <= limit && (*size > 0 || !required);
}

static inline void
store64(char *p, uint64_t v)
{
    __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELAXED);
}

/* publish(channel, type, payload, tag, timestamp_msec[, origin, origin_generation]) ->
 * generation, or None when a field is not bytes / ASCII str within its limit (the caller then
 * checks it in Python, which says what is wrong, and passes bytes). timestamp_msec < 0:
 * CLOCK_REALTIME now. origin None (or absent): a local event. */
static PyObject *
Writer_publish(WriterObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 && nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "publish(channel, type, payload, tag, timestamp_msec[, origin, "
                                         "origin_generation])");
        return NULL;
    }
    const char *ch, *ty, *pl, *og = NULL;
    Py_ssize_t lc, lt, lp, lo = 0;
    uint64_t ogen = 0;
    if (!field(args[0], self->channel_max, 1, &ch, &lc) || !field(args[1], self->type_max, 1, &ty, &lt)
        || !field(args[2], self->payload_max, 0, &pl, &lp))
        Py_RETURN_NONE;
    if (nargs == 7 && args[5] != Py_None) {
        if (!field(args[5], self->origin_max, 1, &og, &lo))
            Py_RETURN_NONE;
        ogen = PyLong_AsUnsignedLongLong(args[6]);
        if (ogen == (uint64_t)-1 && PyErr_Occurred())
            return NULL;
    }
    unsigned long tag = PyLong_AsUnsignedLong(args[3]);
    if (tag == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (tag > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_OverflowError, "tag is a 32-bit value");
        return NULL;
    }
    long long ts = PyLong_AsLongLong(args[4]);
    if (ts == -1 && PyErr_Occurred())
        return NULL;
    if (ts < 0) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);  /* time.time()'s clock, in whole milliseconds */
        ts = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    }

    if (self->lock == NULL || self->lock->fork_generation != fork_generation) {
        /* first publish in this process: the zone's lock (opened by this process) */
        PyObject *lock = PyObject_CallNoArgs(self->get_lock);
        if (lock == NULL)
            return NULL;
        if (!PyObject_TypeCheck(lock, &LockType)) {
            Py_DECREF(lock);
            PyErr_SetString(PyExc_TypeError, "RingWriter: get_lock() must give a _shm_accel.Lock");
            return NULL;
        }
        Py_XSETREF(self->lock, (LockObject *)lock);
    }
    if (lock_acquire(self->lock) < 0)
        return NULL;
    uint64_t newest = *(uint64_t *)self->control;
    uint64_t dropped = *(uint64_t *)(self->control + 8);
    uint64_t gen = newest + 1;
    uint64_t slot = newest % self->capacity;
    char *e = self->entries + slot * (uint64_t)self->entry_size;

    store64(e, 2 * gen - 1);                    /* in flux, before any byte of the body */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    char *b = e + 8;
    memcpy(b, &ts, 8);
    b[8] = (char)lc;
    b[9] = (char)lt;
    uint16_t lp16 = (uint16_t)lp;
    memcpy(b + 10, &lp16, 2);
    b[12] = (char)lo;
    memset(b + 13, 0, 3);
    memcpy(b + 16, &ogen, 8);
    b += 24;
    memcpy(b, ch, lc);
    memset(b + lc, 0, self->channel_max - lc);
    b += self->channel_max;
    memcpy(b, ty, lt);
    memset(b + lt, 0, self->type_max - lt);
    b += self->type_max;
    memcpy(b, pl, lp);
    memset(b + lp, 0, self->payload_max - lp);
    b += self->payload_max;
    if (lo)
        memcpy(b, og, lo);
    memset(b + lo, 0, self->origin_max - lo);
    uint32_t tag32 = (uint32_t)tag;
    memcpy(self->tags + slot * 4, &tag32, 4);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    store64(e, 2 * gen);                        /* whole */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    store64(self->control + 8, dropped + (gen > self->capacity));
    store64(self->control + 16, (uint64_t)ts);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    store64(self->control, gen);                /* readers trust the slot from here on */
    __atomic_store_n(self->word, *self->word + 1, __ATOMIC_RELEASE);
    int wake = __atomic_load_n(self->sleepers, __ATOMIC_ACQUIRE) > 0;

    if (lock_release(self->lock) < 0)
        return NULL;
    if (wake)
        syscall(SYS_futex, self->word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    return PyLong_FromUnsignedLongLong(gen);
}

static inline uint64_t
load64(const char *p)
{
    return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE);
}

/* read(generation) -> an Event (event_type(generation, zone_name, channel, type, payload,
 * timestamp_msec, origin, origin_generation); origin and origin_generation None for a local
 * event), or None when the slot does not hold that generation whole (overwritten, or
 * being written): the seqlock read of ring.py's Ring.read without the interpreter in between.
 * What is copied is checked against the seq read again after the copy, so a torn copy is never
 * decoded into an answer. */
static PyObject *
Writer_read(WriterObject *self, PyObject *arg)
{
    int overflow;
    long long signed_gen = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (signed_gen == -1 && PyErr_Occurred())
        return NULL;
    if (overflow || signed_gen <= 0)
        Py_RETURN_NONE;  /* no slot ever holds it (as in Python: its seq would never match) */
    uint64_t gen = (uint64_t)signed_gen;
    const char *e = self->entries + ((gen - 1) % self->capacity) * (uint64_t)self->entry_size;
    uint64_t want = 2 * gen;
    if (load64(e) != want)
        Py_RETURN_NONE;
    char local[1024];
    Py_ssize_t body = self->entry_size - 8;
    char *copy = body <= (Py_ssize_t)sizeof(local) ? local : PyMem_Malloc(body);
    if (copy == NULL)
        return PyErr_NoMemory();
    memcpy(copy, e + 8, body);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    PyObject *out = NULL;
    if (load64(e) == want) {
        uint64_t ts, ogen;
        uint16_t lp;
        memcpy(&ts, copy, 8);
        memcpy(&lp, copy + 10, 2);
        memcpy(&ogen, copy + 16, 8);
        Py_ssize_t lc = (unsigned char)copy[8], lt = (unsigned char)copy[9], lo = (unsigned char)copy[12];
        lo = lo < self->origin_max ? lo : self->origin_max;
        /* a whole slot's lengths are within the limits its writer checked; clamp anyway */
        lc = lc < self->channel_max ? lc : self->channel_max;
        lt = lt < self->type_max ? lt : self->type_max;
        Py_ssize_t lpl = lp < self->payload_max ? lp : self->payload_max;
        const char *f = copy + 24;
        PyObject *items[8] = {
            PyLong_FromUnsignedLongLong(gen),
            Py_NewRef(self->zone_name),
            PyUnicode_DecodeUTF8(f, lc, "strict"),
            PyUnicode_DecodeUTF8(f + self->channel_max, lt, "strict"),
            PyUnicode_DecodeUTF8(f + self->channel_max + self->type_max, lpl, "strict"),
            PyLong_FromUnsignedLongLong(ts),
            lo ? PyUnicode_DecodeUTF8(f + self->channel_max + self->type_max + self->payload_max, lo, "strict")
               : Py_NewRef(Py_None),
            lo ? PyLong_FromUnsignedLongLong(ogen) : Py_NewRef(Py_None),
        };
        int ok = 1;
        for (int i = 0; i < 8; i++)
            ok = ok && items[i] != NULL;
        /* every item made before the tuple: nothing allocates between its creation and its filling */
        if (ok)
            out = self->event_type->tp_alloc(self->event_type, 8);
        if (out != NULL) {
            for (int i = 0; i < 8; i++)
                PyTuple_SET_ITEM(out, i, items[i]);
        }
        else {
            for (int i = 0; i < 8; i++)
                Py_XDECREF(items[i]);
        }
    }
    else {
        out = Py_NewRef(Py_None);  /* a writer lapped us while we copied */
    }
    if (copy != local)
        PyMem_Free(copy);
    return out;
}

/* newest() -> the ring's newest generation (the control block's first word) */
static PyObject *
Writer_newest(WriterObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(load64(self->control));
}

static PyMethodDef Writer_methods[] = {
    {"publish", (PyCFunction)(void (*)(void))Writer_publish, METH_FASTCALL,
     "publish(channel, type, payload, tag, timestamp_msec[, origin, origin_generation]) -> generation, or "
     "None if a field needs the Python check"},
    {"read", (PyCFunction)Writer_read, METH_O,
     "read(generation) -> an event_type(generation, zone_name, channel, type, payload, timestamp_msec, origin, "
     "origin_generation), or None if the slot does not hold that generation whole"},
    {"newest", (PyCFunction)Writer_newest, METH_NOARGS, "newest() -> the newest generation"},
    {NULL},
};

/* ------------------------------------------------------------------------------------------ */
/* Futex                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* futex_wait(address, expected, timeout) -> 0 when woken, else the errno (EAGAIN: the word was
 * not `expected`; ETIMEDOUT; EINTR). `address` is a 4-byte-aligned word of a shared mapping the
 * caller keeps mapped; `timeout` in seconds, or None. The GIL is released while it sleeps. */
static PyObject *
accel_futex_wait(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "futex_wait(address, expected, timeout)");
        return NULL;
    }
    void *addr = PyLong_AsVoidPtr(args[0]);
    if (addr == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "futex_wait: null address");
        return NULL;
    }
    unsigned long expected = PyLong_AsUnsignedLong(args[1]);
    if (expected == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    struct timespec ts, *tsp = NULL;
    if (args[2] != Py_None) {
        double t = PyFloat_AsDouble(args[2]);
        if (t == -1.0 && PyErr_Occurred())
            return NULL;
        if (!(t > 0))
            t = 0;
        if (t > 1e9)
            t = 1e9;
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        tsp = &ts;
    }
    long rc;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_futex, addr, FUTEX_WAIT, (uint32_t)expected, tsp, NULL, 0);
    if (rc != 0)
        err = errno;
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(err);
}

/* futex_wake(address) -> how many sleepers were woken (all of them) */
static PyObject *
accel_futex_wake(PyObject *mod, PyObject *arg)
{
    void *addr = PyLong_AsVoidPtr(arg);
    if (addr == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "futex_wake: null address");
        return NULL;
    }
    long rc = syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    if (rc < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(rc);
}

/* ------------------------------------------------------------------------------------------ */
/* Counters                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* add_u64(buffer, guard_at, guard, stamp_at, stamp, adds) -> True, or False when the guard did
 * not hold: when the u32 at `guard_at` of `buffer` (a writable shared mapping, e.g. a zone's buf)
 * equals `guard` (guard_at < 0: no guard), store the f64 `stamp` at `stamp_at` (< 0: none) and add
 * each (at, delta) of `adds` (a tuple or list of pairs) to the u64 at `at` -- every access atomic
 * (relaxed): no lock, and no update lost to another process adding at the same time. Offsets must
 * be aligned to their field's size and inside the buffer; nothing is written otherwise. See
 * Zone.add_u64 in shm.py. */
static PyObject *
accel_add_u64(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "add_u64(buffer, guard_at, guard, stamp_at, stamp, adds)");
        return NULL;
    }
    Py_ssize_t guard_at = PyLong_AsSsize_t(args[1]);
    if (guard_at == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t stamp_at = PyLong_AsSsize_t(args[3]);
    if (stamp_at == -1 && PyErr_Occurred())
        return NULL;
    PyObject *adds = PySequence_Fast(args[5], "add_u64: adds must be a sequence of (offset, delta) pairs");
    if (adds == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(adds);
    Py_ssize_t offsets[16];
    uint64_t deltas[16];
    if (n > 16) {
        Py_DECREF(adds);
        PyErr_SetString(PyExc_ValueError, "add_u64: at most 16 counters per call");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(adds, k);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(adds);
            PyErr_SetString(PyExc_TypeError, "add_u64: each add is an (offset, delta) tuple");
            return NULL;
        }
        offsets[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 0));
        deltas[k] = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(pair, 1));
        if ((offsets[k] == -1 || deltas[k] == (uint64_t)-1) && PyErr_Occurred()) {
            Py_DECREF(adds);
            return NULL;
        }
    }
    Py_DECREF(adds);
    unsigned long guard = 0;
    if (guard_at >= 0) {
        guard = PyLong_AsUnsignedLong(args[2]);
        if (guard == (unsigned long)-1 && PyErr_Occurred())
            return NULL;
    }
    double stamp = 0;
    if (stamp_at >= 0) {
        stamp = PyFloat_AsDouble(args[4]);
        if (stamp == -1.0 && PyErr_Occurred())
            return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    char *base = (char *)view.buf;
    PyObject *result = NULL;
    /* every offset checked before anything is written: all of it or none */
    if (guard_at >= 0 && ((uintptr_t)(base + guard_at) % 4 || guard_at + 4 > view.len))
        goto bad_offset;
    if (stamp_at >= 0 && ((uintptr_t)(base + stamp_at) % 8 || stamp_at + 8 > view.len))
        goto bad_offset;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (offsets[k] < 0 || (uintptr_t)(base + offsets[k]) % 8 || offsets[k] + 8 > view.len)
            goto bad_offset;
    }
    if (guard_at >= 0 && __atomic_load_n((uint32_t *)(base + guard_at), __ATOMIC_ACQUIRE) != (uint32_t)guard) {
        result = Py_NewRef(Py_False);
        goto done;
    }
    if (stamp_at >= 0) {
        uint64_t bits;
        memcpy(&bits, &stamp, 8);
        __atomic_store_n((uint64_t *)(base + stamp_at), bits, __ATOMIC_RELAXED);
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        if (deltas[k])
            __atomic_fetch_add((uint64_t *)(base + offsets[k]), deltas[k], __ATOMIC_RELAXED);
    }
    result = Py_NewRef(Py_True);
    goto done;
bad_offset:
    PyErr_SetString(PyExc_ValueError, "add_u64: an offset is outside the buffer or not aligned to its field");
done:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef module_methods[] = {
    {"futex_wait", (PyCFunction)(void (*)(void))accel_futex_wait, METH_FASTCALL,
     "futex_wait(address, expected, timeout) -> 0 when woken, else the errno"},
    {"futex_wake", (PyCFunction)accel_futex_wake, METH_O, "futex_wake(address) -> sleepers woken"},
    {"add_u64", (PyCFunction)(void (*)(void))accel_add_u64, METH_FASTCALL,
     "add_u64(buffer, guard_at, guard, stamp_at, stamp, adds) -> whether the guard held"},
    {NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ngxsim.core._shm_accel.RingWriter",
    .tp_doc = "An event ring's publish in one call (see ngxsim.core.ring_writer).",
    .tp_basicsize = sizeof(WriterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Writer_new,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_methods = Writer_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ngxsim.core._shm_accel", "The optional C half of ngxsim.core.shm.", -1, module_methods,
};

PyMODINIT_FUNC
PyInit__shm_accel(void)
{
    static int registered;
    if (!registered) {
        if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
            PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
            return NULL;
        }
        registered = 1;
    }
    if (PyType_Ready(&LockType) < 0 || PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Lock", (PyObject *)&LockType) < 0
        || PyModule_AddObjectRef(m, "RingWriter", (PyObject *)&WriterType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
