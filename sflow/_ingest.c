/*
 * sflow._ingest: the compiled ingest kernel of the embedded sFlow engine.
 *
 * It does exactly what sflow/ingest.py's Ingest.apply does, on the same state
 * objects (agents, flow tables, thresholds, counter store), for the common
 * datagram: IPv4 agent; compact flow samples holding one sampled header (0:1)
 * and maybe extended_switch (0:1001); compact counter samples (0:2) whose
 * records pass the decoder's own bounds checks. A datagram is validated whole
 * before any effect; any other datagram (and every new map entry, memo miss,
 * threshold firing, eviction) goes to the Python code, so bounds, key
 * functions and events live in one place. Both paths are tested to give the
 * same state on the corpus, the OVS capture and mutated datagrams.
 *
 * Also: recv_batch (recvmmsg into a caller's buffer, GIL released) and
 * send_batch (sendmmsg on a connected socket, for the benchmark's sender).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define KERNEL_VERSION 3 /* bump with any change of what the kernel reads or writes */
#define CACHE_MAX 8192
#define MAX_SAMPLES 256
#define MAX_NAME_SETS 4096

/* interned attribute names */
static PyObject *s_stats, *s_agents, *s_flows, *s_active, *s_thresholds, *s_fired,
    *s_counters, *s_sources, *s_names_seen, *s_skip, *s_memo, *s_uid, *s_memo_scope,
    *s_value_kind, *s_value_factor, *s_t, *s_max_flows, *s_scale, *s_min_impulse,
    *s_count, *s_name, *s_value, *s_by_flow, *s_timeout, *s_last_seen, *s_uptime,
    *s_datagrams, *s_bytes, *s_decoded, *s_samples, *s_flow_samples, *s_counter_samples,
    *s_subagents, *s_samplers, *s_counter_sources, *s_flow_drops, *s_agent, *s_agent_fn,
    *s_first_sequence, *s_compute_key, *s_exceeded, *s_shrink, *s_put, *s_slow, *s_fail,
    *s_value_of, *s_names, *s_where, *s_datasource, *s_empty, *s_put_new, *s_counter_watch,
    *s_counter_sample, *s_log_spec, *s_flow_log, *s_observe;

/* Python helpers, imported on first use */
static PyObject *py_account_sequence, *py_context, *py_make_header, *py_sample_names;
static PyObject *agent_names;

typedef struct {
    PyObject *td, *name; /* borrowed from the thresholds tuple */
    double value, timeout;
    int by_flow;
} Thr;

typedef struct {
    PyObject *obj, *uid, *sources; /* owned */
    PyObject *thresholds;           /* owned tuple */
    PyObject *log_spec;             /* owned; NULL unless the definition logs (flow log) */
    int scope, kind, nthr;
    double factor, t, scale, min_impulse;
    long max_flows;
    Thr *thr;
} Table;

typedef struct {
    int is_flow;
    uint32_t seq, src, rate, drops, inp, out, frame_len, protocol, hlen;
    Py_ssize_t start, end, header_at, switch_at, hs;
    uint32_t nrec;
} Sample;

static inline uint32_t rd32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* --- validation: the decoder's bounds checks of counter records ------------------- */

/* 1 when an XDR string/opaque at off fits before end; *next = padded end */
static int opaque_ok(const unsigned char *d, Py_ssize_t off, Py_ssize_t end, Py_ssize_t *next) {
    if (off + 4 > end) return 0;
    uint32_t n = rd32(d + off);
    Py_ssize_t start = off + 4;
    if ((Py_ssize_t)n > end - start) return 0;
    *next = start + (((Py_ssize_t)n + 3) & ~(Py_ssize_t)3);
    return 1;
}

static int counter_record_ok(uint32_t fmt, const unsigned char *d, Py_ssize_t off, Py_ssize_t end) {
    Py_ssize_t size = -1, next;
    switch (fmt) {
    case 1: size = 88; break;
    case 2: size = 52; break;
    case 5: size = 28; break;
    case 7: size = 56; break;
    case 1001: size = 28; break;
    case 1004: size = 12; break;
    case 2002: size = 8; break;
    case 2003: size = 68; break;
    case 2004: size = 72; break;
    case 2005: size = 52; break;
    case 2006: size = 40; break;
    case 2203: size = 40; break;
    case 2207: size = 24; break;
    case 1005:
        return opaque_ok(d, off, end, &next);
    case 2000:
        if (!opaque_ok(d, off, end, &next)) return 0;
        if (next + 24 > end) return 0;
        return opaque_ok(d, next + 24, end, &next);
    case 2001: {
        if (off + 4 > end) return 0;
        uint32_t count = rd32(d + off);
        off += 4;
        for (uint32_t i = 0; i < count; i++) {
            if (off + 8 > end) return 0;
            uint32_t nmacs = rd32(d + off + 4);
            off += 8;
            if ((Py_ssize_t)nmacs > (end - off) / 8) return 0;
            off += 8 * (Py_ssize_t)nmacs;
        }
        return 1;
    }
    default:
        return 1; /* unknown: skipped by its length */
    }
    return off + size <= end;
}

/* Parse and validate one datagram; 1 if it is the common shape (samples filled). */
static int parse(const unsigned char *d, Py_ssize_t n, uint32_t *hdr, Sample *samples,
                 Py_ssize_t *nsamples_out) {
    if (n < 28) return 0;
    if (rd32(d) != 5 || rd32(d + 4) != 1) return 0;
    uint32_t nsamples = rd32(d + 24);
    hdr[0] = rd32(d + 8);  /* agent address (network order as a number) */
    hdr[1] = rd32(d + 12); /* sub-agent */
    hdr[2] = rd32(d + 16); /* sequence */
    hdr[3] = rd32(d + 20); /* uptime */
    if (nsamples > MAX_SAMPLES) return 0;
    Py_ssize_t off = 28;
    for (uint32_t i = 0; i < nsamples; i++) {
        Sample *s = &samples[i];
        if (off + 8 > n) return 0;
        uint32_t fmt = rd32(d + off), length = rd32(d + off + 4);
        Py_ssize_t start = off + 8;
        if ((Py_ssize_t)length > n - start) return 0;
        Py_ssize_t end = start + length;
        s->start = start;
        s->end = end;
        if (fmt == 1) {
            if (start + 32 > end) return 0;
            const unsigned char *p = d + start;
            s->is_flow = 1;
            s->seq = rd32(p);
            s->src = rd32(p + 4);
            s->rate = rd32(p + 8);
            s->drops = rd32(p + 16);
            s->inp = rd32(p + 20);
            s->out = rd32(p + 24);
            s->nrec = rd32(p + 28);
            s->header_at = s->switch_at = -1;
            Py_ssize_t roff = start + 32;
            for (uint32_t r = 0; r < s->nrec; r++) {
                if (roff + 8 > end) return 0;
                uint32_t rfmt = rd32(d + roff), rlen = rd32(d + roff + 4);
                Py_ssize_t rstart = roff + 8;
                if ((Py_ssize_t)rlen > end - rstart) return 0;
                roff = rstart + rlen;
                if (rfmt == 1 && s->header_at < 0) {
                    if (rstart + 16 > roff) return 0;
                    uint32_t hl = rd32(d + rstart + 12);
                    if ((Py_ssize_t)hl > roff - (rstart + 16)) return 0;
                    s->header_at = rstart;
                } else if (rfmt == 1001 && s->switch_at < 0) {
                    if (rstart + 16 > roff) return 0;
                    s->switch_at = rstart;
                } else {
                    return 0;
                }
            }
            if (s->header_at < 0) return 0;
            s->protocol = rd32(d + s->header_at);
            s->frame_len = rd32(d + s->header_at + 4);
            s->hlen = rd32(d + s->header_at + 12);
            s->hs = s->header_at + 16;
        } else if (fmt == 2) {
            if (start + 12 > end) return 0;
            s->is_flow = 0;
            s->seq = rd32(d + start);
            s->src = rd32(d + start + 4);
            s->nrec = rd32(d + start + 8);
            Py_ssize_t roff = start + 12;
            for (uint32_t r = 0; r < s->nrec; r++) {
                if (roff + 8 > end) return 0;
                uint32_t rfmt = rd32(d + roff), rlen = rd32(d + roff + 4);
                Py_ssize_t rstart = roff + 8;
                if ((Py_ssize_t)rlen > end - rstart) return 0;
                roff = rstart + rlen;
                if (rfmt < 4096 && !counter_record_ok(rfmt, d, rstart, roff)) return 0;
            }
        } else {
            return 0;
        }
        off = end;
    }
    *nsamples_out = nsamples;
    return 1;
}

/* --- small helpers --------------------------------------------------------------------- */

static int add_long_attr(PyObject *obj, PyObject *name, long long delta) {
    if (delta == 0) return 0;
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v) return -1;
    PyObject *d = PyLong_FromLongLong(delta);
    PyObject *sum = d ? PyNumber_Add(v, d) : NULL;
    Py_DECREF(v);
    Py_XDECREF(d);
    if (!sum) return -1;
    int rc = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return rc;
}

static int set_ll_attr(PyObject *obj, PyObject *name, long long value) {
    PyObject *v = PyLong_FromLongLong(value);
    if (!v) return -1;
    int rc = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return rc;
}

static double attr_double(PyObject *obj, PyObject *name, int *err) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v) { *err = 1; return 0; }
    double x = PyFloat_AsDouble(v);
    Py_DECREF(v);
    if (x == -1.0 && PyErr_Occurred()) *err = 1;
    return x;
}

static long attr_long(PyObject *obj, PyObject *name, int *err) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v) { *err = 1; return 0; }
    long x = PyLong_AsLong(v);
    Py_DECREF(v);
    if (x == -1 && PyErr_Occurred()) *err = 1;
    return x;
}

static PyObject *sid_tuple(uint32_t sub, uint32_t cls, uint32_t idx) {
    return Py_BuildValue("(kkk)", (unsigned long)sub, (unsigned long)cls, (unsigned long)idx);
}

/* Seq accounting of an existing entry: returns 1 if `last` moves to seq, 0 if not, -1 error */
static PyObject *s_lost[3], *s_dup[3], *s_ooo[3];

/* sflow.agents.account_sequence, here: what seq after last means for the agent's
   totals (kind 0 datagrams, 1 flow samples, 2 counter samples); 1 if last moves */
static int account(PyObject *agent, int kind, long long last, long long seq) {
    if (seq == last + 1) return 1;
    if (seq > last + 1) return add_long_attr(agent, s_lost[kind], seq - last - 1) < 0 ? -1 : 1;
    if (seq == last) return add_long_attr(agent, s_dup[kind], 1) < 0 ? -1 : 0;
    if (seq <= 1 || last - seq > 1000000) return 1; /* RESTART_GAP: the agent restarted */
    return add_long_attr(agent, s_ooo[kind], 1) < 0 ? -1 : 0;
}

static int helpers_ready;

static int import_helpers(void) {
    if (helpers_ready) return 0;
    PyObject *agents = PyImport_ImportModule("sflow.agents");
    if (!agents) return -1;
    py_account_sequence = PyObject_GetAttrString(agents, "account_sequence");
    Py_DECREF(agents);
    PyObject *fast = PyImport_ImportModule("sflow.fastpath");
    if (!fast) return -1;
    py_context = PyObject_GetAttrString(fast, "_context");
    py_make_header = PyObject_GetAttrString(fast, "make_header");
    py_sample_names = PyObject_GetAttrString(fast, "SAMPLE_NAMES");
    Py_DECREF(fast);
    if (!py_account_sequence || !py_context || !py_make_header || !py_sample_names) {
        Py_CLEAR(py_account_sequence);
        Py_CLEAR(py_context);
        Py_CLEAR(py_make_header);
        Py_CLEAR(py_sample_names);
        return -1;
    }
    helpers_ready = 1;
    return 0;
}

/* --- caches of shared header keys and contexts, keyed by raw bytes ---------------------
   Open addressing in C (no key object per lookup); each entry owns the Python object and
   the attributes the kernel reads from it, so a hit costs no attribute lookup. Cleared
   whole when CACHE_MAX entries are held, like sflow.fastpath's dicts. */

#define SLOTS (2 * CACHE_MAX)
#define KEYMAX 48

typedef struct {
    uint64_t hash; /* 0: empty */
    unsigned char len;
    unsigned char key[KEYMAX];
    PyObject *obj, *x[4]; /* owned */
} Slot;

typedef struct {
    Slot *slots;
    Py_ssize_t count;
} Cache;

static Cache header_slots, context_slots;

static uint64_t hash_bytes(const unsigned char *p, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    h ^= h >> 29; /* FNV-1a's low bits mix poorly: fold the high ones in */
    return h | ((uint64_t)1 << 63); /* never 0 (0 marks an empty slot) */
}

static void cache_clear(Cache *c) {
    if (!c->slots) return;
    for (Py_ssize_t i = 0; i < SLOTS; i++) {
        Slot *e = &c->slots[i];
        if (!e->hash) continue;
        Py_CLEAR(e->obj);
        for (int j = 0; j < 4; j++) Py_CLEAR(e->x[j]);
        e->hash = 0;
    }
    c->count = 0;
}

/* the slot holding key, or the empty slot where it goes (NULL: no memory) */
static Slot *cache_find(Cache *c, const unsigned char *key, Py_ssize_t len, uint64_t h) {
    if (!c->slots) {
        c->slots = PyMem_Calloc(SLOTS, sizeof(Slot));
        if (!c->slots) { PyErr_NoMemory(); return NULL; }
    }
    Py_ssize_t i = (Py_ssize_t)(h & (SLOTS - 1));
    for (;;) {
        Slot *e = &c->slots[i];
        if (!e->hash || (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0))
            return e;
        i = (i + 1) & (SLOTS - 1);
    }
}

typedef struct {
    PyObject *obj, *memo, *names; /* owned for the time of one sample */
} HeaderRef;

typedef struct {
    PyObject *obj, *where, *agent, *ds, *names; /* owned for the time of one sample */
} CtxRef;

static void header_release(HeaderRef *r) {
    Py_XDECREF(r->obj);
    Py_XDECREF(r->memo);
    Py_XDECREF(r->names);
}

static void ctx_release(CtxRef *r) {
    Py_XDECREF(r->obj);
    Py_XDECREF(r->where);
    Py_XDECREF(r->agent);
    Py_XDECREF(r->ds);
    Py_XDECREF(r->names);
}

/* The header keys of a sample: cached on the bytes its keys depend on (as fastpath). */
static int header_for(const unsigned char *d, Sample *s, HeaderRef *out) {
    const unsigned char *h = d + s->hs;
    uint32_t n = s->hlen;
    unsigned char sig[KEYMAX];
    Py_ssize_t siglen = 0;
    if (s->protocol == 1 && n >= 48 && h[12] == 8 && h[13] == 0 && h[14] == 0x45 &&
        !(h[20] & 0x1F) && !h[21]) {
        unsigned char proto = h[23];
        int vxlan = proto == 17 && h[36] == 0x12 && h[37] == 0xB5;
        if (!vxlan) {
            memcpy(sig, h, 18);
            sig[18] = proto;
            Py_ssize_t l4 = proto == 6 ? 12 : proto == 17 ? 12 : proto == 1 ? 10 : 8;
            memcpy(sig + 19, h + 26, l4);
            siglen = 19 + l4;
            if (proto == 6) {
                memcpy(sig + siglen, h + 46, 2);
                siglen += 2;
            }
        }
    }
    Slot *e = NULL;
    uint64_t hv = 0;
    if (siglen) {
        hv = hash_bytes(sig, siglen);
        e = cache_find(&header_slots, sig, siglen, hv);
        if (!e) return -1;
        if (e->hash) {
            out->obj = e->obj; out->memo = e->x[0]; out->names = e->x[1];
            Py_INCREF(out->obj); Py_INCREF(out->memo); Py_INCREF(out->names);
            return 0;
        }
    }
    PyObject *raw = PyBytes_FromStringAndSize((const char *)h, n);
    if (!raw) return -1;
    PyObject *header = PyObject_CallFunction(py_make_header, "kO", (unsigned long)s->protocol, raw);
    Py_DECREF(raw);
    if (!header) return -1;
    PyObject *memo = PyObject_GetAttr(header, s_memo);
    PyObject *names = memo ? PyObject_GetAttr(header, s_names) : NULL;
    if (!names) { Py_DECREF(header); Py_XDECREF(memo); return -1; }
    out->obj = header; out->memo = memo; out->names = names;
    if (e) {
        if (header_slots.count >= CACHE_MAX) {
            cache_clear(&header_slots);
            e = cache_find(&header_slots, sig, siglen, hv);
        }
        e->hash = hv;
        e->len = (unsigned char)siglen;
        memcpy(e->key, sig, siglen);
        e->obj = header; e->x[0] = memo; e->x[1] = names;
        Py_INCREF(header); Py_INCREF(memo); Py_INCREF(names);
        header_slots.count++;
    }
    return 0;
}

static int context_for(PyObject *payload, const unsigned char *d, Sample *s,
                       PyObject *agent_name, CtxRef *out) {
    unsigned char ck[32];
    memcpy(ck, d + 8, 4);
    memcpy(ck + 4, d + s->start + 4, 4);
    memcpy(ck + 8, d + s->start + 20, 8);
    Py_ssize_t len = 16;
    if (s->switch_at >= 0) {
        memcpy(ck + 16, d + s->switch_at, 16);
        len = 32;
    }
    uint64_t hv = hash_bytes(ck, len);
    Slot *e = cache_find(&context_slots, ck, len, hv);
    if (!e) return -1;
    if (e->hash) {
        out->obj = e->obj; out->where = e->x[0]; out->agent = e->x[1]; out->ds = e->x[2];
        out->names = e->x[3];
        Py_INCREF(out->obj); Py_INCREF(out->where); Py_INCREF(out->agent); Py_INCREF(out->ds);
        Py_INCREF(out->names);
        return 0;
    }
    PyObject *ctx = PyObject_CallFunction(py_context, "OOnn", agent_name, payload, s->start,
                                          s->switch_at);
    if (!ctx) return -1;
    out->obj = ctx;
    out->where = PyObject_GetAttr(ctx, s_where);
    out->agent = PyObject_GetAttr(ctx, s_agent);
    out->ds = PyObject_GetAttr(ctx, s_datasource);
    out->names = PyObject_GetAttr(ctx, s_names);
    if (!out->where || !out->agent || !out->ds || !out->names) {
        ctx_release(out);
        memset(out, 0, sizeof *out);
        return -1;
    }
    if (context_slots.count >= CACHE_MAX) {
        cache_clear(&context_slots);
        e = cache_find(&context_slots, ck, len, hv);
    }
    e->hash = hv;
    e->len = (unsigned char)len;
    memcpy(e->key, ck, len);
    e->obj = ctx; e->x[0] = out->where; e->x[1] = out->agent; e->x[2] = out->ds;
    e->x[3] = out->names;
    Py_INCREF(ctx); Py_INCREF(out->where); Py_INCREF(out->agent); Py_INCREF(out->ds);
    Py_INCREF(out->names);
    context_slots.count++;
    return 0;
}

static PyObject *agent_name_of(uint32_t addr) {
    PyObject *k = PyLong_FromUnsignedLong(addr);
    if (!k) return NULL;
    PyObject *name = PyDict_GetItemWithError(agent_names, k);
    if (name) {
        Py_DECREF(k);
        Py_INCREF(name);
        return name;
    }
    if (PyErr_Occurred()) { Py_DECREF(k); return NULL; }
    char text[20];
    snprintf(text, sizeof text, "%u.%u.%u.%u", addr >> 24, (addr >> 16) & 255,
             (addr >> 8) & 255, addr & 255);
    name = PyUnicode_FromString(text);
    if (name && PyDict_GET_SIZE(agent_names) < 4096) PyDict_SetItem(agent_names, k, name);
    Py_DECREF(k);
    return name;
}

/* --- the kernel ------------------------------------------------------------------------- */

typedef struct {
    PyObject *ing, *flows_obj, *thresholds_obj, *fired, *counters_obj, *store, *seen, *skip,
        *agents_obj, *agents_dict;
    Table *tables;
    Py_ssize_t ntables;
    int counter_watch;
    PyObject *flow_log;
    double now;
    PyObject *now_obj;
    long long datagrams, bytes, decoded, samples, flow_samples, counter_samples;
} Batch;

/* one update of a flow: rate, thresholds */
static int update_flow(Batch *b, Table *tb, CtxRef *ctx, PyObject *key, double value,
                       double scaled) {
    double impulse = value * scaled / tb->t;
    if (impulse < tb->min_impulse && impulse > 0) {
        tb->min_impulse = impulse;
        PyObject *v = PyFloat_FromDouble(impulse);
        if (!v) return -1;
        int rc = PyObject_SetAttr(tb->obj, s_min_impulse, v);
        Py_DECREF(v);
        if (rc < 0) return -1;
    }
    if (isnan(tb->scale)) { /* first update of this table in the batch, as Python's scale() */
        PyObject *sc = PyObject_CallMethodObjArgs(tb->obj, s_scale, b->now_obj, NULL);
        if (!sc) return -1;
        tb->scale = PyFloat_AsDouble(sc);
        Py_DECREF(sc);
    }
    double scale = tb->scale;
    PyObject *where = ctx->where;
    PyObject *src = PyDict_GetItemWithError(tb->sources, where);
    if (!src) {
        if (PyErr_Occurred()) return -1;
        PyObject *flows = PyDict_New();
        src = flows ? Py_BuildValue("[NO]", flows, b->now_obj) : NULL;
        if (!src || PyDict_SetItem(tb->sources, where, src) < 0) {
            Py_XDECREF(src);
            return -1;
        }
        Py_DECREF(src); /* the dict holds it */
    } else {
        PyObject *last = PyList_GET_ITEM(src, 1);
        if (PyFloat_AS_DOUBLE(last) < b->now) {
            Py_INCREF(b->now_obj);
            PyList_SetItem(src, 1, b->now_obj);
        }
    }
    PyObject *flows = PyList_GET_ITEM(src, 0);
    PyObject *stored_obj = PyDict_GetItemWithError(flows, key);
    double stored;
    if (!stored_obj) {
        if (PyErr_Occurred()) return -1;
        stored = impulse * scale;
        PyObject *v = PyFloat_FromDouble(stored);
        if (!v || PyDict_SetItem(flows, key, v) < 0) { Py_XDECREF(v); return -1; }
        Py_DECREF(v);
        int err = 0;
        long count = attr_long(tb->obj, s_count, &err) + 1;
        if (err || set_ll_attr(tb->obj, s_count, count) < 0) return -1;
        if (count > tb->max_flows) {
            PyObject *r = PyObject_CallMethodObjArgs(b->flows_obj, s_shrink, tb->obj, b->now_obj, NULL);
            if (!r) return -1;
            Py_DECREF(r);
        }
    } else {
        stored = PyFloat_AsDouble(stored_obj) + impulse * scale;
        PyObject *v = PyFloat_FromDouble(stored);
        if (!v || PyDict_SetItem(flows, key, v) < 0) { Py_XDECREF(v); return -1; }
        Py_DECREF(v);
    }
    if (tb->log_spec && b->flow_log != Py_None) { /* sflow.flowlog, as FlowTables.update */
        PyObject *v = PyFloat_FromDouble(value * scaled);
        PyObject *r = v ? PyObject_CallMethodObjArgs(b->flow_log, s_observe, tb->log_spec,
                                                     ctx->agent, ctx->ds, key, v, b->now_obj,
                                                     NULL) : NULL;
        Py_XDECREF(v);
        if (!r) return -1;
        Py_DECREF(r);
    }
    if (!tb->nthr) return 0;
    double rate = stored / scale;
    PyObject *agent = ctx->agent, *ds = ctx->ds;
    int rc = 0;
    for (int i = 0; i < tb->nthr; i++) {
        Thr *th = &tb->thr[i];
        if (!(rate > th->value)) continue;
        /* the common case, "still armed off", here; anything else in Python */
        PyObject *arm = PyTuple_Pack(4, th->name, agent, ds, th->by_flow ? key : s_empty);
        if (!arm) { rc = -1; break; }
        PyObject *fell_obj = PyDict_GetItemWithError(b->fired, arm);
        if (fell_obj) {
            double fell = PyFloat_AsDouble(fell_obj);
            if (b->now - fell <= th->timeout) {
                double falls = th->value > 0 ? b->now + tb->t * log(rate / th->value) : INFINITY;
                if (falls > fell) {
                    PyObject *v = PyFloat_FromDouble(falls);
                    if (!v || PyDict_SetItem(b->fired, arm, v) < 0) {
                        Py_XDECREF(v);
                        Py_DECREF(arm);
                        rc = -1;
                        break;
                    }
                    Py_DECREF(v);
                }
                Py_DECREF(arm);
                continue;
            }
        } else if (PyErr_Occurred()) {
            Py_DECREF(arm);
            rc = -1;
            break;
        }
        Py_DECREF(arm);
        PyObject *t = PyFloat_FromDouble(tb->t), *r = PyFloat_FromDouble(rate);
        PyObject *res = (t && r) ? PyObject_CallMethodObjArgs(
            b->thresholds_obj, s_exceeded, th->td, t, agent, ds, key, r, b->now_obj, NULL) : NULL;
        Py_XDECREF(t);
        Py_XDECREF(r);
        if (!res) { rc = -1; break; }
        Py_DECREF(res);
    }
    return rc;
}

static int flow_sample(Batch *b, PyObject *payload, const unsigned char *d, Sample *s,
                       PyObject *agent_name, int *first) {
    HeaderRef header = {0};
    CtxRef ctx = {0};
    if (header_for(d, s, &header) < 0) return -1;
    if (context_for(payload, d, s, agent_name, &ctx) < 0) { header_release(&header); return -1; }
    int rc = -1;
    PyObject *memo = header.memo;
    if (*first) {
        *first = 0;
        if (PyDict_GET_SIZE(b->seen) >= MAX_NAME_SETS) PyDict_Clear(b->seen);
        if (PyDict_SetItem(b->seen, header.names, b->now_obj) < 0 ||
            PyDict_SetItem(b->seen, ctx.names, b->now_obj) < 0 ||
            PyDict_SetItem(b->seen, py_sample_names, b->now_obj) < 0)
            goto done;
    }
    double scaled = s->rate ? (double)s->rate : 1.0;
    PyObject *nbytes = NULL, *rate_obj = NULL;
    for (Py_ssize_t i = 0; i < b->ntables; i++) {
        Table *tb = &b->tables[i];
        PyObject *key = NULL, *mkey = NULL;
        if (tb->scope == 1) {
            key = PyDict_GetItemWithError(memo, tb->uid);
        } else if (tb->scope == 2) {
            mkey = PyTuple_Pack(2, tb->uid, ctx.obj);
            if (!mkey) goto loop_err;
            key = PyDict_GetItemWithError(memo, mkey);
            Py_DECREF(mkey);
        }
        if (key) {
            Py_INCREF(key);
        } else {
            if (PyErr_Occurred()) goto loop_err;
            if (!nbytes) {
                nbytes = PyLong_FromUnsignedLong(s->frame_len);
                rate_obj = nbytes ? PyLong_FromUnsignedLong(s->rate) : NULL;
                if (!rate_obj) goto loop_err;
            }
            key = PyObject_CallMethodObjArgs(tb->obj, s_compute_key, header.obj, ctx.obj, nbytes,
                                             rate_obj, NULL);
            if (!key) goto loop_err;
        }
        if (key == b->skip) { Py_DECREF(key); continue; }
        double value;
        if (tb->kind == 1) {
            value = (double)s->frame_len * tb->factor;
        } else if (tb->kind == 2) {
            value = tb->factor;
        } else {
            if (!nbytes) {
                nbytes = PyLong_FromUnsignedLong(s->frame_len);
                rate_obj = nbytes ? PyLong_FromUnsignedLong(s->rate) : NULL;
                if (!rate_obj) { Py_DECREF(key); goto loop_err; }
            }
            PyObject *v = PyObject_CallMethodObjArgs(b->ing, s_value_of, tb->obj, header.obj,
                                                     ctx.obj, nbytes, rate_obj, NULL);
            if (!v) { Py_DECREF(key); goto loop_err; }
            if (v == Py_None) { Py_DECREF(v); Py_DECREF(key); continue; }
            value = PyFloat_AsDouble(v);
            Py_DECREF(v);
            if (value == -1.0 && PyErr_Occurred()) { Py_DECREF(key); goto loop_err; }
        }
        int urc = update_flow(b, tb, &ctx, key, value, scaled);
        Py_DECREF(key);
        if (urc < 0) goto loop_err;
    }
    rc = 0;
loop_err:
    Py_XDECREF(nbytes);
    Py_XDECREF(rate_obj);
done:
    header_release(&header);
    ctx_release(&ctx);
    return rc;
}

static int counter_sample(Batch *b, PyObject *agent_obj, PyObject *agent_name,
                          const unsigned char *d, Sample *s) {
    uint32_t cls = s->src >> 24, idx = s->src & 0xFFFFFF;
    PyObject *ds = cls == 0 ? PyUnicode_FromFormat("%lu", (unsigned long)idx)
                            : PyUnicode_FromFormat("%lu.%lu", (unsigned long)cls, (unsigned long)idx);
    if (!ds) return -1;
    PyObject *blob = PyBytes_FromStringAndSize((const char *)d + s->start + 8,
                                               s->end - (s->start + 8));
    PyObject *key = blob ? PyTuple_Pack(2, agent_name, ds) : NULL;
    int rc = -1;
    if (!key) goto out;
    PyObject *old = PyDict_GetItemWithError(b->store, key);
    if (!old) {
        if (PyErr_Occurred()) goto out;
        PyObject *r = PyObject_CallMethod(b->counters_obj, "put", "OOkOO", agent_name, ds,
                                          (unsigned long)s->seq, b->now_obj, blob);
        if (!r) goto out;
        Py_DECREF(r);
    } else {
        PyObject *entry = Py_BuildValue("(kOOOOO)", (unsigned long)s->seq, b->now_obj, blob,
                                        PyTuple_GET_ITEM(old, 0), PyTuple_GET_ITEM(old, 1),
                                        PyTuple_GET_ITEM(old, 2));
        if (!entry) goto out;
        /* move to the end: the dict stays ordered by last update (eviction order) */
        if (PyDict_DelItem(b->store, key) < 0 || PyDict_SetItem(b->store, key, entry) < 0) {
            Py_DECREF(entry);
            goto out;
        }
        Py_DECREF(entry);
    }
    if (b->counter_watch) { /* thresholds on counter metrics: Python, only when defined */
        PyObject *r = PyObject_CallMethodObjArgs(b->thresholds_obj, s_counter_sample, agent_name,
                                                 ds, b->now_obj, b->counters_obj, NULL);
        if (!r) goto out;
        Py_DECREF(r);
    }
    rc = 0;
out:
    Py_XDECREF(key);
    Py_XDECREF(blob);
    Py_DECREF(ds);
    (void)agent_obj;
    return rc;
}

/* all effects of one validated datagram; -1 with a Python error set on failure */
static int apply(Batch *b, PyObject *payload, PyObject *source, const unsigned char *d,
                 uint32_t *hdr, Sample *samples, Py_ssize_t nsamples, Py_ssize_t size) {
    PyObject *name = agent_name_of(hdr[0]);
    if (!name) return -1;
    int rc = -1;
    PyObject *agent = PyDict_GetItemWithError(b->agents_dict, name);
    if (agent) {
        Py_INCREF(agent);
    } else {
        if (PyErr_Occurred()) goto out_name;
        agent = PyObject_CallMethodObjArgs(b->agents_obj, s_agent_fn, name, b->now_obj, NULL);
        if (!agent) goto out_name;
    }
    int err = 0;
    double last_seen = attr_double(agent, s_last_seen, &err);
    if (err) goto out;
    if (last_seen < b->now && PyObject_SetAttr(agent, s_last_seen, b->now_obj) < 0) goto out;
    if (set_ll_attr(agent, s_uptime, hdr[3]) < 0) goto out;
    if (add_long_attr(agent, s_datagrams, 1) < 0) goto out;
    if (PyUnicode_GET_LENGTH(source)) {
        PyObject *sources = PyObject_GetAttr(agent, s_sources);
        if (!sources) goto out;
        int bad = PySet_GET_SIZE(sources) < 16 && PySet_Add(sources, source) < 0;
        Py_DECREF(sources);
        if (bad) goto out;
    }
    PyObject *subs = PyObject_GetAttr(agent, s_subagents);
    if (!subs) goto out;
    PyObject *sub = PyLong_FromUnsignedLong(hdr[1]);
    PyObject *seq = sub ? PyLong_FromUnsignedLong(hdr[2]) : NULL;
    if (!seq) { Py_XDECREF(sub); Py_DECREF(subs); goto out; }
    PyObject *last = PyDict_GetItemWithError(subs, sub);
    int bad = 0;
    if (!last) {
        if (PyErr_Occurred()) bad = 1;
        else {
            PyObject *r = PyObject_CallMethod(b->agents_obj, "first_sequence", "OiOO", agent, 0,
                                              sub, seq);
            if (!r) bad = 1; else Py_DECREF(r);
        }
    } else {
        int moves = account(agent, 0, PyLong_AsLongLong(last), hdr[2]);
        if (moves < 0 || (moves && PyDict_SetItem(subs, sub, seq) < 0)) bad = 1;
    }
    Py_DECREF(subs);
    Py_DECREF(sub);
    Py_DECREF(seq);
    if (bad) goto out;

    long long nflow = 0, ncounter = 0;
    int first = 1;
    PyObject *samplers = NULL, *csources = NULL;
    /* the samples of a datagram mostly share one sampler: keep its entry at hand
       (owned; dropped whenever Python code could have changed the map) */
    PyObject *cached_entry = NULL;
    uint32_t cached_src = 0;
    for (Py_ssize_t i = 0; i < nsamples; i++) {
        Sample *s = &samples[i];
        b->samples++;
        if (s->is_flow && cached_entry && s->src == cached_src) {
            b->flow_samples++;
            nflow++;
            PyObject *entry = cached_entry;
            long long lastseq = PyLong_AsLongLong(PyList_GET_ITEM(entry, 0));
            if ((long long)s->seq == lastseq + 1) {
                PyObject *v = PyLong_FromUnsignedLong(s->seq);
                if (!v) goto out_maps;
                PyList_SetItem(entry, 0, v);
                long long lastdrops = PyLong_AsLongLong(PyList_GET_ITEM(entry, 1));
                if ((long long)s->drops == lastdrops) {
                    if (b->ntables && flow_sample(b, payload, d, s, name, &first) < 0) goto out_maps;
                    continue;
                }
                /* drops moved: undo the fast step and take the general one below */
                v = PyLong_FromLongLong(lastseq);
                if (!v) goto out_maps;
                PyList_SetItem(entry, 0, v);
            }
            b->flow_samples--;
            nflow--;
        }
        Py_CLEAR(cached_entry);
        PyObject *sid = sid_tuple(hdr[1], s->src >> 24, s->src & 0xFFFFFF);
        if (!sid) goto out_maps;
        if (s->is_flow) {
            b->flow_samples++;
            nflow++;
            if (!samplers && !(samplers = PyObject_GetAttr(agent, s_samplers))) { Py_DECREF(sid); goto out_maps; }
            PyObject *entry = PyDict_GetItemWithError(samplers, sid);
            if (entry) {
                Py_INCREF(entry);
                cached_entry = entry;
                cached_src = s->src;
            }
            if (!entry) {
                if (PyErr_Occurred()) { Py_DECREF(sid); goto out_maps; }
                PyObject *r = PyObject_CallMethod(b->agents_obj, "first_sequence", "OiOkk", agent,
                                                  1, sid, (unsigned long)s->seq, (unsigned long)s->drops);
                if (!r) { Py_DECREF(sid); goto out_maps; }
                Py_DECREF(r);
            } else {
                long long lastseq = PyLong_AsLongLong(PyList_GET_ITEM(entry, 0));
                int moves = account(agent, 1, lastseq, s->seq);
                if (moves < 0) { Py_DECREF(sid); goto out_maps; }
                if (moves) {
                    PyObject *v = PyLong_FromUnsignedLong(s->seq);
                    if (!v) { Py_DECREF(sid); goto out_maps; }
                    PyList_SetItem(entry, 0, v);
                }
                long long lastdrops = PyLong_AsLongLong(PyList_GET_ITEM(entry, 1));
                if ((long long)s->drops != lastdrops) {
                    if ((long long)s->drops > lastdrops &&
                        add_long_attr(agent, s_flow_drops, (long long)s->drops - lastdrops) < 0) {
                        Py_DECREF(sid);
                        goto out_maps;
                    }
                    PyObject *v = PyLong_FromUnsignedLong(s->drops);
                    if (!v) { Py_DECREF(sid); goto out_maps; }
                    PyList_SetItem(entry, 1, v);
                }
            }
            Py_DECREF(sid);
            if (b->ntables && flow_sample(b, payload, d, s, name, &first) < 0) goto out_maps;
        } else {
            Py_CLEAR(cached_entry);
            b->counter_samples++;
            ncounter++;
            if (!csources && !(csources = PyObject_GetAttr(agent, s_counter_sources))) { Py_DECREF(sid); goto out_maps; }
            PyObject *lastc = PyDict_GetItemWithError(csources, sid);
            if (!lastc) {
                if (PyErr_Occurred()) { Py_DECREF(sid); goto out_maps; }
                PyObject *r = PyObject_CallMethod(b->agents_obj, "first_sequence", "OiOk", agent,
                                                  2, sid, (unsigned long)s->seq);
                if (!r) { Py_DECREF(sid); goto out_maps; }
                Py_DECREF(r);
            } else {
                int moves = account(agent, 2, PyLong_AsLongLong(lastc), s->seq);
                if (moves < 0) { Py_DECREF(sid); goto out_maps; }
                if (moves) {
                    PyObject *v = PyLong_FromUnsignedLong(s->seq);
                    int bad2 = !v || PyDict_SetItem(csources, sid, v) < 0;
                    Py_XDECREF(v);
                    if (bad2) { Py_DECREF(sid); goto out_maps; }
                }
            }
            Py_DECREF(sid);
            if (counter_sample(b, agent, name, d, s) < 0) goto out_maps;
        }
    }
    if (add_long_attr(agent, s_flow_samples, nflow) < 0) goto out_maps;
    if (add_long_attr(agent, s_counter_samples, ncounter) < 0) goto out_maps;
    rc = 0;
out_maps:
    Py_XDECREF(cached_entry);
    Py_XDECREF(samplers);
    Py_XDECREF(csources);
out:
    Py_DECREF(agent);
out_name:
    Py_DECREF(name);
    (void)size;
    return rc;
}

static void release_tables(Batch *b) {
    for (Py_ssize_t i = 0; i < b->ntables; i++) {
        Table *tb = &b->tables[i];
        Py_XDECREF(tb->obj);
        Py_XDECREF(tb->uid);
        Py_XDECREF(tb->sources);
        Py_XDECREF(tb->thresholds);
        Py_XDECREF(tb->log_spec);
        PyMem_Free(tb->thr);
    }
    PyMem_Free(b->tables);
    b->tables = NULL;
}

static int load_tables(Batch *b) {
    PyObject *active = PyObject_GetAttr(b->flows_obj, s_active);
    if (!active) return -1;
    if (!PyTuple_Check(active)) {
        Py_DECREF(active);
        PyErr_SetString(PyExc_TypeError, "flows.active must be a tuple");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(active);
    b->ntables = 0;
    b->tables = PyMem_Calloc(n ? n : 1, sizeof(Table));
    if (!b->tables) { Py_DECREF(active); PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < n; i++) {
        Table *tb = &b->tables[i];
        PyObject *obj = PyTuple_GET_ITEM(active, i);
        Py_INCREF(obj);
        tb->obj = obj;
        b->ntables = i + 1;
        int err = 0;
        tb->uid = PyObject_GetAttr(obj, s_uid);
        tb->sources = PyObject_GetAttr(obj, s_sources);
        tb->thresholds = PyObject_GetAttr(obj, s_thresholds);
        tb->scope = (int)attr_long(obj, s_memo_scope, &err);
        tb->kind = (int)attr_long(obj, s_value_kind, &err);
        tb->factor = attr_double(obj, s_value_factor, &err);
        tb->t = attr_double(obj, s_t, &err);
        tb->max_flows = attr_long(obj, s_max_flows, &err);
        tb->min_impulse = attr_double(obj, s_min_impulse, &err);
        if (err || !tb->uid || !tb->sources || !tb->thresholds) goto fail;
        PyObject *spec = PyObject_GetAttr(obj, s_log_spec);
        if (!spec) goto fail;
        if (spec == Py_None) Py_DECREF(spec); else tb->log_spec = spec;
        tb->scale = NAN;
        PyObject *thr = PySequence_Fast(tb->thresholds, "thresholds");
        if (!thr) goto fail;
        Py_SETREF(tb->thresholds, thr);
        tb->nthr = (int)PySequence_Fast_GET_SIZE(thr);
        tb->thr = PyMem_Calloc(tb->nthr ? tb->nthr : 1, sizeof(Thr));
        if (!tb->thr) { PyErr_NoMemory(); goto fail; }
        for (int j = 0; j < tb->nthr; j++) {
            PyObject *td = PySequence_Fast_GET_ITEM(thr, j);
            Thr *th = &tb->thr[j];
            th->td = td;
            PyObject *nm = PyObject_GetAttr(td, s_name);
            if (!nm) goto fail;
            th->name = nm;
            Py_DECREF(nm); /* the td keeps it alive */
            th->value = attr_double(td, s_value, &err);
            th->timeout = attr_double(td, s_timeout, &err);
            th->by_flow = (int)attr_long(td, s_by_flow, &err);
            if (err) goto fail;
        }
    }
    Py_DECREF(active);
    return 0;
fail:
    Py_DECREF(active);
    return -1;
}

static int flush_stats(Batch *b, PyObject *stats) {
    if (add_long_attr(stats, s_datagrams, b->datagrams) < 0 ||
        add_long_attr(stats, s_bytes, b->bytes) < 0 ||
        add_long_attr(stats, s_decoded, b->decoded) < 0 ||
        add_long_attr(stats, s_samples, b->samples) < 0 ||
        add_long_attr(stats, s_flow_samples, b->flow_samples) < 0 ||
        add_long_attr(stats, s_counter_samples, b->counter_samples) < 0)
        return -1;
    b->datagrams = b->bytes = b->decoded = b->samples = b->flow_samples = b->counter_samples = 0;
    return 0;
}

/* ingest(ingest_obj, [(payload, source), ...], now) -> failures */
static PyObject *ingest(PyObject *self, PyObject *args) {
    PyObject *ing, *batch;
    double now;
    if (!PyArg_ParseTuple(args, "OO!d", &ing, &PyList_Type, &batch, &now)) return NULL;
    if (import_helpers() < 0) return NULL;
    Batch b;
    memset(&b, 0, sizeof b);
    b.ing = ing;
    b.now = now;
    PyObject *stats = PyObject_GetAttr(ing, s_stats);
    b.flows_obj = PyObject_GetAttr(ing, s_flows);
    b.thresholds_obj = PyObject_GetAttr(ing, s_thresholds);
    b.counters_obj = PyObject_GetAttr(ing, s_counters);
    b.agents_obj = PyObject_GetAttr(ing, s_agents);
    b.seen = PyObject_GetAttr(ing, s_names_seen);
    b.skip = PyObject_GetAttr(ing, s_skip);
    b.now_obj = PyFloat_FromDouble(now);
    b.fired = b.thresholds_obj ? PyObject_GetAttr(b.thresholds_obj, s_fired) : NULL;

    b.store = b.counters_obj ? PyObject_GetAttr(b.counters_obj, s_sources) : NULL;
    b.agents_dict = b.agents_obj ? PyObject_GetAttr(b.agents_obj, s_agents) : NULL;
    PyObject *result = NULL;
    long failures = 0;
    if (!stats || !b.flows_obj || !b.thresholds_obj || !b.counters_obj || !b.agents_obj ||
        !b.seen || !b.skip || !b.now_obj || !b.fired || !b.store || !b.agents_dict)
        goto out;
    if (load_tables(&b) < 0) goto out;
    b.flow_log = PyObject_GetAttr(b.flows_obj, s_flow_log);
    if (!b.flow_log) goto out;
    PyObject *watch = PyObject_GetAttr(b.thresholds_obj, s_counter_watch);
    if (!watch) goto out;
    b.counter_watch = PyObject_IsTrue(watch) > 0;
    Py_DECREF(watch);
    Py_ssize_t n = PyList_GET_SIZE(batch);
    Sample samples[MAX_SAMPLES];
    uint32_t hdr[4];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(batch, i);
        PyObject *payload, *source;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "batch items are (payload, source) tuples");
            goto out;
        }
        payload = PyTuple_GET_ITEM(item, 0);
        source = PyTuple_GET_ITEM(item, 1);
        Py_ssize_t nsamples = 0;
        int common = PyBytes_CheckExact(payload) && PyUnicode_Check(source) &&
                     parse((const unsigned char *)PyBytes_AS_STRING(payload),
                           PyBytes_GET_SIZE(payload), hdr, samples, &nsamples);
        if (!common) {
            /* the Python path, in order (it keeps its own counts) */
            if (flush_stats(&b, stats) < 0) goto out;
            PyObject *r = PyObject_CallMethodObjArgs(ing, s_slow, payload, source, b.now_obj, NULL);
            if (!r) {
                PyObject *type, *value, *tb;
                PyErr_Fetch(&type, &value, &tb);
                PyErr_NormalizeException(&type, &value, &tb);
                failures++;
                PyObject *f = PyObject_CallMethodObjArgs(ing, s_fail, source, value ? value : Py_None, NULL);
                Py_XDECREF(type);
                Py_XDECREF(value);
                Py_XDECREF(tb);
                if (!f) goto out;
                Py_DECREF(f);
            } else {
                Py_DECREF(r);
            }
            continue;
        }
        Py_ssize_t size = PyBytes_GET_SIZE(payload);
        b.datagrams++;
        b.bytes += size;
        if (apply(&b, payload, source, (const unsigned char *)PyBytes_AS_STRING(payload), hdr,
                  samples, nsamples, size) < 0) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            failures++;
            if (flush_stats(&b, stats) < 0) goto out;
            PyObject *f = PyObject_CallMethodObjArgs(ing, s_fail, source, value ? value : Py_None, NULL);
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            if (!f) goto out;
            Py_DECREF(f);
            /* tables may have changed under a failing callback: reload them */
            release_tables(&b);
            if (load_tables(&b) < 0) goto out;
            continue;
        }
        b.decoded++;
    }
    if (flush_stats(&b, stats) < 0) goto out;
    result = PyLong_FromLong(failures);
out:
    release_tables(&b);
    Py_XDECREF(stats);
    Py_XDECREF(b.flows_obj);
    Py_XDECREF(b.thresholds_obj);
    Py_XDECREF(b.counters_obj);
    Py_XDECREF(b.agents_obj);
    Py_XDECREF(b.seen);
    Py_XDECREF(b.skip);
    Py_XDECREF(b.now_obj);
    Py_XDECREF(b.fired);
    Py_XDECREF(b.store);
    Py_XDECREF(b.agents_dict);
    Py_XDECREF(b.flow_log);
    return result;
}

/* --- sockets -------------------------------------------------------------------------------- */

#define SLOT 65536

static PyObject *addr_text(struct sockaddr_storage *sa) {
    char text[INET6_ADDRSTRLEN];
    if (sa->ss_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, text, sizeof text);
    } else if (sa->ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, text, sizeof text);
    } else {
        text[0] = 0;
    }
    return PyUnicode_FromString(text);
}

/* recv_batch(fd, buffer, max) -> [(payload, source address), ...]; [] when none waits.
   ``buffer``: a writable buffer of at least max * 65536 bytes (an anonymous mmap). */
static PyObject *recv_batch(PyObject *self, PyObject *args) {
    int fd, max;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "iw*i", &fd, &buf, &max)) return NULL;
    if (max > 1024) max = 1024;
    if (max < 1 || buf.len < (Py_ssize_t)max * SLOT) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "buffer smaller than max * 65536 bytes");
        return NULL;
    }
    struct mmsghdr msgs[1024];
    struct iovec iov[1024];
    struct sockaddr_storage addrs[1024];
    for (int i = 0; i < max; i++) {
        iov[i].iov_base = (char *)buf.buf + (Py_ssize_t)i * SLOT;
        iov[i].iov_len = SLOT;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &addrs[i];
        msgs[i].msg_hdr.msg_namelen = sizeof addrs[i];
    }
    int got;
    Py_BEGIN_ALLOW_THREADS
    got = recvmmsg(fd, msgs, max, MSG_DONTWAIT, NULL);
    Py_END_ALLOW_THREADS
    if (got < 0) {
        PyBuffer_Release(&buf);
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(got);
    PyObject *last_text = NULL;
    struct sockaddr_storage last_addr;
    socklen_t last_len = 0;
    for (int i = 0; out && i < got; i++) {
        unsigned int len = msgs[i].msg_len;
        if (len > SLOT) len = SLOT;
        PyObject *payload = PyBytes_FromStringAndSize((char *)buf.buf + (Py_ssize_t)i * SLOT, len);
        PyObject *text;
        socklen_t alen = msgs[i].msg_hdr.msg_namelen;
        if (last_text && alen == last_len && memcmp(&addrs[i], &last_addr, alen) == 0) {
            text = last_text;
            Py_INCREF(text);
        } else {
            text = addr_text(&addrs[i]);
            if (text) {
                Py_XDECREF(last_text);
                last_text = text;
                Py_INCREF(last_text);
                memcpy(&last_addr, &addrs[i], alen);
                last_len = alen;
            }
        }
        PyObject *item = (payload && text) ? PyTuple_Pack(2, payload, text) : NULL;
        Py_XDECREF(payload);
        Py_XDECREF(text);
        if (!item) { Py_CLEAR(out); break; }
        PyList_SET_ITEM(out, i, item);
    }
    Py_XDECREF(last_text);
    PyBuffer_Release(&buf);
    return out;
}

/* send_batch(fd, [payload, ...]) -> sent: sendmmsg on a connected socket */
static PyObject *send_batch(PyObject *self, PyObject *args) {
    int fd;
    PyObject *list;
    if (!PyArg_ParseTuple(args, "iO!", &fd, &PyList_Type, &list)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (n > 1024) n = 1024;
    struct mmsghdr msgs[1024];
    struct iovec iov[1024];
    PyObject *held[1024]; /* the payloads stay alive while the GIL is released */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyList_GET_ITEM(list, i);
        if (!PyBytes_Check(p)) {
            for (Py_ssize_t j = 0; j < i; j++) Py_DECREF(held[j]);
            PyErr_SetString(PyExc_TypeError, "payloads must be bytes");
            return NULL;
        }
        Py_INCREF(p);
        held[i] = p;
        iov[i].iov_base = PyBytes_AS_STRING(p);
        iov[i].iov_len = PyBytes_GET_SIZE(p);
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    Py_ssize_t sent = 0;
    int err = 0;
    while (sent < n) {
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = sendmmsg(fd, msgs + sent, (unsigned int)(n - sent), 0);
        Py_END_ALLOW_THREADS
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno != ENOBUFS && errno != EAGAIN) err = errno;
            break;
        }
        sent += r;
    }
    for (Py_ssize_t i = 0; i < n; i++) Py_DECREF(held[i]);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromSsize_t(sent);
}

static PyMethodDef methods[] = {
    {"ingest", ingest, METH_VARARGS, "ingest(ingest, [(payload, source)], now) -> failures"},
    {"recv_batch", recv_batch, METH_VARARGS, "recv_batch(fd, buffer, max) -> [(payload, source)]"},
    {"send_batch", send_batch, METH_VARARGS, "send_batch(fd, [payload]) -> sent"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "sflow._ingest",
                                    "Compiled ingest kernel of the embedded sFlow engine.", -1,
                                    methods};

#define INTERN(var, text) if (!(var = PyUnicode_InternFromString(text))) return NULL

PyMODINIT_FUNC PyInit__ingest(void) {
    INTERN(s_stats, "stats"); INTERN(s_agents, "agents"); INTERN(s_flows, "flows");
    INTERN(s_active, "active"); INTERN(s_thresholds, "thresholds"); INTERN(s_fired, "fired");
    INTERN(s_counters, "counters"); INTERN(s_sources, "sources");
    INTERN(s_names_seen, "names_seen"); INTERN(s_skip, "skip"); INTERN(s_memo, "memo");
    INTERN(s_uid, "uid"); INTERN(s_memo_scope, "memo_scope"); INTERN(s_value_kind, "value_kind");
    INTERN(s_value_factor, "value_factor"); INTERN(s_t, "t"); INTERN(s_max_flows, "max_flows");
    INTERN(s_scale, "scale"); INTERN(s_min_impulse, "min_impulse"); INTERN(s_count, "count");
    INTERN(s_name, "name"); INTERN(s_value, "value"); INTERN(s_by_flow, "by_flow");
    INTERN(s_timeout, "timeout"); INTERN(s_last_seen, "last_seen"); INTERN(s_uptime, "uptime");
    INTERN(s_datagrams, "datagrams"); INTERN(s_bytes, "bytes"); INTERN(s_decoded, "decoded");
    INTERN(s_samples, "samples"); INTERN(s_flow_samples, "flow_samples");
    INTERN(s_counter_samples, "counter_samples"); INTERN(s_subagents, "subagents");
    INTERN(s_samplers, "samplers"); INTERN(s_counter_sources, "counter_sources");
    INTERN(s_flow_drops, "flow_drops"); INTERN(s_agent, "agent"); INTERN(s_agent_fn, "agent");
    INTERN(s_first_sequence, "first_sequence"); INTERN(s_compute_key, "compute_key");
    INTERN(s_exceeded, "exceeded"); INTERN(s_shrink, "shrink"); INTERN(s_put, "put");
    INTERN(s_slow, "slow"); INTERN(s_fail, "fail"); INTERN(s_value_of, "value_of");
    INTERN(s_names, "names"); INTERN(s_where, "where"); INTERN(s_datasource, "datasource");
    INTERN(s_empty, ""); INTERN(s_put_new, "put");
    INTERN(s_counter_watch, "counter_watch"); INTERN(s_counter_sample, "counter_sample");
    INTERN(s_log_spec, "log_spec"); INTERN(s_flow_log, "flow_log"); INTERN(s_observe, "observe");
    INTERN(s_lost[0], "datagrams_lost"); INTERN(s_lost[1], "flow_lost");
    INTERN(s_lost[2], "counter_lost");
    INTERN(s_dup[0], "datagrams_duplicates"); INTERN(s_dup[1], "flow_duplicates");
    INTERN(s_dup[2], "counter_duplicates");
    INTERN(s_ooo[0], "datagrams_out_of_order"); INTERN(s_ooo[1], "flow_out_of_order");
    INTERN(s_ooo[2], "counter_out_of_order");
    agent_names = PyDict_New();
    if (!agent_names) return NULL;
    PyObject *m = PyModule_Create(&module);
    /* sflow/ingest.py refuses a kernel built from other sources (a stale build) */
    if (m && PyModule_AddIntConstant(m, "KERNEL_VERSION", KERNEL_VERSION) < 0) Py_CLEAR(m);
    return m;
}
