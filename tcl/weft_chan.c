/*
 * weft_chan.c -- per-channel state: options, waiters, the channel handlers
 * that wake them, blocking mode, and noticing channels that leave the
 * interpreter.
 *
 * Invariant: a state exists only while it holds something (options, a
 * waiter, a non-blocking user, a pending restore), and it holds a reference
 * on its channel only while a coroutine waits on it or a restore is pending
 * ("held").  So between weft calls `close`, `thread::transfer` and friends
 * see the channel as Tcl left it (a configured channel also has a close
 * handler, which changes nothing of what they do).  Calls go down only: this
 * file calls weft_wait.c (waking), never weft_io.c.
 */
#include "weft_tcl.h"

#include <string.h>

#define WEFT_SWEEP_MS 50

static void ChanReadable(ClientData cd, int mask);
static void ChanWritable(ClientData cd, int mask);
static void ChanClosed(ClientData cd);
static void Sweep(ClientData cd);
static void Unhook(Wait *w);
static void Release(Wait *w, int code);

static Tcl_ChannelProc *const chanProcs[2] = {ChanReadable, ChanWritable};
static const int chanMasks[2] = {TCL_READABLE, TCL_WRITABLE};

/*
 * Every live state, with its thread: a close handler may run in another
 * thread (the channel was handed over with thread::transfer) or after the
 * state was dropped without touching the channel; it acts only on a live
 * state of its own thread.
 */
TCL_DECLARE_MUTEX(registryMutex)
static Tcl_HashTable registry;
static int registryReady;

static void
RegistryAdd(ChanState *cs)
{
    Tcl_HashEntry *he;
    int isNew;

    Tcl_MutexLock(&registryMutex);
    if (!registryReady) {
        Tcl_InitHashTable(&registry, TCL_ONE_WORD_KEYS);
        registryReady = 1;
    }
    he = Tcl_CreateHashEntry(&registry, (const char *) cs, &isNew);
    Tcl_SetHashValue(he, (ClientData) cs->wi->thread);
    Tcl_MutexUnlock(&registryMutex);
}

static void
RegistryRemove(ChanState *cs)
{
    Tcl_HashEntry *he;

    Tcl_MutexLock(&registryMutex);
    he = Tcl_FindHashEntry(&registry, (const char *) cs);
    if (he != NULL) {
        Tcl_DeleteHashEntry(he);
    }
    if (registry.numEntries == 0) {
        /* Free its buckets: Tcl unloads this library at exit. */
        Tcl_DeleteHashTable(&registry);
        registryReady = 0;
    }
    Tcl_MutexUnlock(&registryMutex);
}

/* Whether cd is a live state of the calling thread. */
static int
RegistryOwns(ClientData cd)
{
    Tcl_HashEntry *he;
    int owns;

    Tcl_MutexLock(&registryMutex);
    he = registryReady ? Tcl_FindHashEntry(&registry, (const char *) cd)
            : NULL;
    owns = he != NULL
            && (Tcl_ThreadId) Tcl_GetHashValue(he) == Tcl_GetCurrentThread();
    Tcl_MutexUnlock(&registryMutex);
    return owns;
}

/* ---------------------------------------------------------------- handlers */

static void
EnsureHandler(ChanState *cs, int dir)
{
    if (!cs->handler[dir]) {
        Tcl_CreateChannelHandler(cs->chan, chanMasks[dir], chanProcs[dir], cs);
        cs->handler[dir] = 1;
        cs->wi->handlers++;
    }
}

/* tclDropped: Tcl already removed it (the channel is closing, or gone). */
static void
DropHandler(ChanState *cs, int dir, int tclDropped)
{
    if (cs->handler[dir]) {
        if (!tclDropped) {
            Tcl_DeleteChannelHandler(cs->chan, chanProcs[dir], cs);
        }
        cs->handler[dir] = 0;
        cs->wi->handlers--;
    }
}

/* ------------------------------------------------------------------ states */

/*
 * Whether the interpreter still knows the channel under the name it had:
 * safe even if the channel was freed (nothing of it is read).
 */
static int
StillRegistered(ChanState *cs)
{
    Tcl_Interp *interp = cs->wi->interp;
    Tcl_InterpState saved = Tcl_SaveInterpState(interp, TCL_OK);
    int same = Tcl_GetChannel(interp, cs->name, NULL) == cs->chan;

    Tcl_RestoreInterpState(interp, saved);
    return same;
}

/*
 * How a state is dropped:
 *   DROP_GONE      the channel left the interpreter without a close we saw
 *                  (a close that Tcl finishes in the background, a transfer)
 *                  and may be freed: nothing of it is touched.
 *   DROP_TCLCLOSE  Tcl is closing it (our close handler runs; Tcl has
 *                  already removed the channel handlers).
 *   DROP_CLOSED    the interpreter closed it while we held it: wake the
 *                  waiters, remove what we registered, release it.
 *   DROP_IDLE      nothing left to hold: remove what we registered.
 *   DROP_DYING     the interpreter is being deleted: as DROP_IDLE, no
 *                  wake-ups.
 * Waiters are woken from an idle callback, never from inside a close.
 */
enum { DROP_GONE, DROP_TCLCLOSE, DROP_CLOSED, DROP_IDLE, DROP_DYING };

static void
DropState(ChanState *cs, int how)
{
    WeftInterp *wi = cs->wi;
    Tcl_Channel chan = cs->chan;
    int touch = how == DROP_CLOSED || how == DROP_IDLE || how == DROP_DYING;
    int held = cs->held;
    int d;

    if (cs->name != NULL) {
        RegistryRemove(cs);
        if (touch) {
            Tcl_DeleteCloseHandler(chan, ChanClosed, cs);
        }
        ckfree(cs->name);
    }
    for (d = 0; d < 2; d++) {
        Wait *w = cs->waiter[d];

        DropHandler(cs, d, !touch);
        if (w == NULL) {
            continue;
        }
        cs->waiter[d] = NULL;
        w->waiting = 0;
        wi->armed--;
        w->cs = NULL;
        w->chan = NULL;
        w->flags |= W_CLOSED;
        w->flags &= ~W_SETNB;
        if (how != DROP_DYING) {
            Weft_WakeLater(w);
        }
    }
    Tcl_DeleteHashEntry(cs->entry);
    ckfree((char *) cs);
    if (wi->chans.numEntries == 0 && wi->sweep != NULL) {
        Tcl_DeleteTimerHandler(wi->sweep);     /* nothing left to watch */
        wi->sweep = NULL;
    }
    if (touch && held) {
        /* Last: this may close the channel now. */
        Tcl_UnregisterChannel(NULL, chan);
    }
}

ChanState *
Weft_ChanFind(WeftInterp *wi, Tcl_Channel chan)
{
    Tcl_HashEntry *he = Tcl_FindHashEntry(&wi->chans, (const char *) chan);
    ChanState *cs;

    if (he == NULL) {
        return NULL;
    }
    cs = (ChanState *) Tcl_GetHashValue(he);
    if (!cs->held && cs->name != NULL
            && strcmp(cs->name, Tcl_GetChannelName(chan)) != 0) {
        /* The state of a channel that went away; chan is another one. */
        DropState(cs, DROP_GONE);
        return NULL;
    }
    return cs;
}

ChanState *
Weft_ChanGet(WeftInterp *wi, Tcl_Channel chan)
{
    ChanState *cs = Weft_ChanFind(wi, chan);
    int isNew;

    if (cs != NULL) {
        return cs;
    }
    cs = (ChanState *) ckalloc(sizeof(ChanState));
    memset(cs, 0, sizeof *cs);
    cs->wi = wi;
    cs->chan = chan;
    cs->entry = Tcl_CreateHashEntry(&wi->chans, (const char *) chan, &isNew);
    cs->maxline = WEFT_DEFAULT_MAXLINE;
    cs->maxoutput = WEFT_DEFAULT_MAXOUTPUT;
    Tcl_SetHashValue(cs->entry, cs);
    if (wi->sweep == NULL) {
        wi->sweep = Tcl_CreateTimerHandler(WEFT_SWEEP_MS, Sweep, wi);
    }
    return cs;
}

/*
 * weft::configure set an option: the state now outlives the calls, so it
 * needs to learn of a close between them (a close handler, and the name to
 * check it is still the same channel).  While a call holds the channel no
 * close can happen, so other states need neither.
 */
void
Weft_ChanConfigured(ChanState *cs)
{
    const char *name;

    cs->configured = 1;
    if (cs->name != NULL) {
        return;
    }
    name = Tcl_GetChannelName(cs->chan);
    cs->name = ckalloc(strlen(name) + 1);
    strcpy(cs->name, name);
    RegistryAdd(cs);
    Tcl_CreateCloseHandler(cs->chan, ChanClosed, cs);
}

/*
 * Take or release our reference as the state needs it.  Returns 0 if the
 * state was dropped: the interpreter had closed the channel meanwhile.
 */
static int
UpdateHold(ChanState *cs)
{
    int want = cs->waiter[0] || cs->waiter[1] || cs->restorePending;

    if (want && !cs->held) {
        Tcl_RegisterChannel(NULL, cs->chan);
        cs->held = 1;
    } else if (!want && cs->held) {
        if (!Tcl_IsChannelRegistered(cs->wi->interp, cs->chan)) {
            DropState(cs, DROP_CLOSED);
            return 0;
        }
        cs->held = 0;
        Tcl_UnregisterChannel(NULL, cs->chan);
    }
    return 1;
}

/* Drop the state if it holds nothing any more. */
void
Weft_ChanMaybeFree(ChanState *cs)
{
    if (!UpdateHold(cs)) {
        return;
    }
    if (!cs->configured && !cs->held && cs->nbUsers == 0) {
        DropState(cs, DROP_IDLE);
    }
}

/*
 * Drop a channel's state before its owner closes it (weft::serve's wrapper),
 * unless a call is in progress on it.  A close that Tcl finishes in the
 * background (output still queued) runs no close handler and frees none, so
 * this saves the handler record Tcl would lose.
 */
void
Weft_ChanForget(WeftInterp *wi, Tcl_Channel chan)
{
    ChanState *cs = Weft_ChanFind(wi, chan);

    if (cs != NULL && cs->waiter[0] == NULL && cs->waiter[1] == NULL
            && cs->nbUsers == 0) {
        DropState(cs, DROP_IDLE);
    }
}

static void
ChanClosed(ClientData cd)
{
    if (RegistryOwns(cd)) {
        DropState((ChanState *) cd, DROP_TCLCLOSE);
    }
}

/* Notice channels that left the interpreter without a close we saw. */
static void
Sweep(ClientData cd)
{
    WeftInterp *wi = (WeftInterp *) cd;
    Tcl_HashSearch s;
    Tcl_HashEntry *he;
    int again;

    wi->sweep = NULL;
    do {
        again = 0;
        for (he = Tcl_FirstHashEntry(&wi->chans, &s); he != NULL;
                he = Tcl_NextHashEntry(&s)) {
            ChanState *cs = (ChanState *) Tcl_GetHashValue(he);

            if (cs->held && !Tcl_IsChannelRegistered(wi->interp, cs->chan)) {
                DropState(cs, DROP_CLOSED);
            } else if (!cs->held && cs->name != NULL && !StillRegistered(cs)) {
                DropState(cs, DROP_GONE);
            } else {
                continue;
            }
            again = 1;          /* the table changed: restart */
            break;
        }
    } while (again);
    if (wi->chans.numEntries > 0 && !wi->deleted) {
        wi->sweep = Tcl_CreateTimerHandler(WEFT_SWEEP_MS, Sweep, wi);
    }
}

void
Weft_FreeAllChanStates(WeftInterp *wi)
{
    Tcl_HashSearch s;
    Tcl_HashEntry *he;

    if (wi->sweep != NULL) {
        Tcl_DeleteTimerHandler(wi->sweep);
        wi->sweep = NULL;
    }
    while ((he = Tcl_FirstHashEntry(&wi->chans, &s)) != NULL) {
        ChanState *cs = (ChanState *) Tcl_GetHashValue(he);

        DropState(cs, cs->held || cs->name == NULL || StillRegistered(cs)
                ? DROP_DYING : DROP_GONE);
    }
}

/* ------------------------------------------------------------------- waits */

/* Make w a wait on cs in one direction (its unhook and release). */
void
Weft_ChanAttach(Wait *w, ChanState *cs, int dir)
{
    w->cs = cs;
    w->chan = cs->chan;
    w->dir = dir;
    w->timeout = cs->timeout;
    w->unhook = Unhook;
    w->release = Release;
}

/* Register w as its channel's waiter: the channel handler will wake it. */
void
Weft_ChanArm(Wait *w)
{
    ChanState *cs = w->cs;

    if (!w->waiting) {
        cs->waiter[w->dir] = w;
        w->waiting = 1;
        w->wi->armed++;
    }
    EnsureHandler(cs, w->dir);
    UpdateHold(cs);             /* taking a reference cannot drop it */
}

static void
Unhook(Wait *w)
{
    ChanState *cs = w->cs;

    if (cs == NULL || !w->waiting) {
        return;
    }
    cs->waiter[w->dir] = NULL;
    w->waiting = 0;
    w->wi->armed--;
    if (!(w->dir == DIR_WRITE && cs->restorePending)) {
        DropHandler(cs, w->dir, 0);
    }
}

static void
Release(Wait *w, int code)
{
    ChanState *cs = w->cs;

    if (cs == NULL) {
        return;                 /* the state went with its channel */
    }
    if (w->flags & W_SETNB) {
        /* A write that ended well saw Tcl's flush end; others may not. */
        w->flags &= ~W_SETNB;
        Weft_ChanLeaveNonBlocking(w, code == TCL_OK);
    }
    w->cs = NULL;
    Weft_ChanMaybeFree(cs);
}

/* -------------------------------------------------------------- blocking */

/*
 * Make the channel non-blocking for a call (or a step of one).  The mode it
 * had is kept per channel and restored when the last user leaves (a reader
 * and a writer may overlap).
 */
int
Weft_ChanEnterNonBlocking(Wait *w)
{
    ChanState *cs = w->cs;

    if (cs->nbUsers == 0) {
        Tcl_DString ds;
        int blocking;

        Tcl_DStringInit(&ds);
        if (Tcl_GetChannelOption(w->interp, w->chan, "-blocking", &ds)
                != TCL_OK) {
            Tcl_DStringFree(&ds);
            return TCL_ERROR;
        }
        blocking = strcmp(Tcl_DStringValue(&ds), "0") != 0;
        Tcl_DStringFree(&ds);
        cs->wasBlocking = blocking || cs->restorePending;
        if (blocking && Tcl_SetChannelOption(w->interp, w->chan, "-blocking",
                "0") != TCL_OK) {
            return TCL_ERROR;
        }
    }
    cs->nbUsers++;
    return TCL_OK;
}

/*
 * The call (or step) no longer needs the channel non-blocking.  flushIdle:
 * no background flush of Tcl's can be running now (a channel handler saw
 * the channel writable, which Tcl reports only after its flush, or the call
 * queued no output).  Tcl stops a background flush when a channel becomes
 * blocking, so otherwise the restore waits for the writable handler.
 */
void
Weft_ChanLeaveNonBlocking(Wait *w, int flushIdle)
{
    ChanState *cs = w->cs;

    cs->nbUsers--;
    if (flushIdle) {
        cs->restorePending = 0;
    }
    if (cs->nbUsers > 0 || !cs->wasBlocking) {
        return;
    }
    if (!cs->restorePending
            && (flushIdle || Tcl_OutputBuffered(cs->chan) == 0)) {
        Tcl_SetChannelOption(NULL, cs->chan, "-blocking", "1");
        return;
    }
    cs->restorePending = 1;
    EnsureHandler(cs, DIR_WRITE);
    UpdateHold(cs);
}

/* ------------------------------------------------------------- wake-ups */

static void
ChanReady(ChanState *cs, int dir)
{
    Wait *w = cs->waiter[dir];

    if (w != NULL) {
        w->flags |= W_FIRED;
        Weft_Wake(w);           /* cs may be gone when this returns */
        return;
    }
    DropHandler(cs, dir, 0);
    if (dir == DIR_WRITE && cs->restorePending && cs->nbUsers == 0) {
        /* Tcl reports writable only once its background flush is done. */
        cs->restorePending = 0;
        Tcl_SetChannelOption(NULL, cs->chan, "-blocking", "1");
        Weft_ChanMaybeFree(cs);
    }
}

static void
ChanReadable(ClientData cd, int mask)
{
    (void) mask;
    ChanReady((ChanState *) cd, DIR_READ);
}

static void
ChanWritable(ClientData cd, int mask)
{
    (void) mask;
    ChanReady((ChanState *) cd, DIR_WRITE);
}
