/*
 * weft_chan.c -- per-channel state: options, waiters, blocking mode, the
 * (lazily removed) channel handlers that wake waiters, and the detection of
 * channels the interpreter has closed.
 *
 * Channel handlers are removed lazily: when one fires and the channel has no
 * waiter in that direction it deletes itself, so a loop of gets that wait
 * does not churn the notifier.
 */
#include "weft_tcl.h"

#include <string.h>

#define WEFT_SWEEP_MS 50

static void ChanReadable(ClientData cd, int mask);
static void ChanWritable(ClientData cd, int mask);
static void ChanClosed(ClientData cd);
static void Sweep(ClientData cd);

static Tcl_ChannelProc *const chanProcs[2] = {ChanReadable, ChanWritable};
static const int chanMasks[2] = {TCL_READABLE, TCL_WRITABLE};

/* Make sure the channel handler for one direction is registered. */
void
Weft_EnsureHandler(ChanState *cs, int dir)
{
    if (!cs->handler[dir]) {
        Tcl_CreateChannelHandler(cs->chan, chanMasks[dir], chanProcs[dir], cs);
        cs->handler[dir] = 1;
        cs->wi->handlers++;
    }
}

/* ---------------------------------------------------------------- channels */

ChanState *
Weft_ChanState(WeftInterp *wi, Tcl_Channel chan, int create)
{
    Tcl_HashEntry *he;
    ChanState *cs;
    int isNew;

    if (!create) {
        he = Tcl_FindHashEntry(&wi->chans, (const char *) chan);
        return he ? (ChanState *) Tcl_GetHashValue(he) : NULL;
    }
    he = Tcl_CreateHashEntry(&wi->chans, (const char *) chan, &isNew);
    if (!isNew) {
        return (ChanState *) Tcl_GetHashValue(he);
    }
    cs = (ChanState *) ckalloc(sizeof(ChanState));
    memset(cs, 0, sizeof *cs);
    cs->wi = wi;
    cs->chan = chan;
    cs->entry = he;
    cs->timeout = 0;
    cs->maxline = WEFT_DEFAULT_MAXLINE;
    cs->maxoutput = WEFT_DEFAULT_MAXOUTPUT;
    Tcl_SetHashValue(he, cs);
    Tcl_RegisterChannel(NULL, chan);
    Tcl_CreateCloseHandler(chan, ChanClosed, cs);
    if (wi->sweep == NULL) {
        wi->sweep = Tcl_CreateTimerHandler(WEFT_SWEEP_MS, Sweep, wi);
    }
    return cs;
}

void
Weft_DropHandler(ChanState *cs, int dir, int tclDropped)
{
    if (cs->handler[dir]) {
        if (!tclDropped) {
            Tcl_DeleteChannelHandler(cs->chan, chanProcs[dir], cs);
        }
        cs->handler[dir] = 0;
        cs->wi->handlers--;
    }
}

/*
 * Forget a channel's state.  how:
 *   DROP_TCLCLOSE  Tcl is closing the channel (close handler; Tcl has already
 *                  dropped the channel handlers): wake the waiters.
 *   DROP_CLOSED    the interpreter closed (unregistered) the channel: wake
 *                  the waiters, then release our reference.
 *   DROP_DYING     the interpreter is being deleted: release, no wake-ups.
 * Waiters are woken from an idle callback, never from inside a close.
 */
enum { DROP_DYING, DROP_TCLCLOSE, DROP_CLOSED };

static void
DropChanState(ChanState *cs, int how)
{
    Tcl_Channel chan = cs->chan;
    int d;

    if (how != DROP_TCLCLOSE) {
        Tcl_DeleteCloseHandler(chan, ChanClosed, cs);
    }
    for (d = 0; d < 2; d++) {
        Wait *w = cs->waiter[d];

        Weft_DropHandler(cs, d, how == DROP_TCLCLOSE);
        if (w == NULL) {
            continue;
        }
        Weft_Disarm(w);
        w->cs = NULL;
        w->chan = NULL;
        w->flags |= W_CLOSED;
        w->flags &= ~W_SETNB;
        if (how != DROP_DYING) {
            /* Resume from the event loop, not from inside Tcl_Close. */
            Weft_WakeLater(w);
        }
    }
    Tcl_DeleteHashEntry(cs->entry);
    ckfree((char *) cs);
    if (how != DROP_TCLCLOSE) {
        /* Last: this may close the channel now. */
        Tcl_UnregisterChannel(NULL, chan);
    }
}

static void
ChanClosed(ClientData cd)
{
    DropChanState((ChanState *) cd, DROP_TCLCLOSE);
}

/* Periodically release channels the interpreter has closed. */
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
            if (!Tcl_IsChannelRegistered(wi->interp, cs->chan)) {
                DropChanState(cs, DROP_CLOSED);
                again = 1;      /* the table changed: restart */
                break;
            }
        }
    } while (again);
    if (wi->chans.numEntries > 0 && !wi->deleted) {
        wi->sweep = Tcl_CreateTimerHandler(WEFT_SWEEP_MS, Sweep, wi);
    }
}

/* weft::_forget: drop a channel's state now (before closing it). */
void
Weft_ForgetChannel(WeftInterp *wi, Tcl_Channel chan)
{
    ChanState *cs = Weft_ChanState(wi, chan, 0);

    if (cs != NULL) {
        DropChanState(cs, DROP_CLOSED);
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
        DropChanState((ChanState *) Tcl_GetHashValue(he), DROP_DYING);
    }
}

/*
 * Make the channel non-blocking for the duration of the call.  The original
 * mode is kept per channel and restored when the last weft call using the
 * channel finishes (a reader and a writer may overlap).
 */
int
Weft_SetNonBlocking(Wait *w)
{
    ChanState *cs = w->cs;
    Tcl_DString ds;

    if (cs->nbUsers == 0) {
        Tcl_DStringInit(&ds);
        if (Tcl_GetChannelOption(w->interp, w->chan, "-blocking", &ds)
                != TCL_OK) {
            Tcl_DStringFree(&ds);
            return TCL_ERROR;
        }
        cs->wasBlocking = cs->restorePending
                || strcmp(Tcl_DStringValue(&ds), "0") != 0;
        cs->restorePending = 0;
        Tcl_DStringFree(&ds);
        if (cs->wasBlocking && Tcl_SetChannelOption(w->interp, w->chan,
                "-blocking", "0") != TCL_OK) {
            return TCL_ERROR;
        }
    }
    cs->nbUsers++;
    w->flags |= W_SETNB;
    return TCL_OK;
}

/* Same, when the caller has just read the channel's -blocking option. */
int
Weft_SetNonBlockingKnown(Wait *w, int blocking)
{
    ChanState *cs = w->cs;

    if (cs->nbUsers == 0) {
        cs->wasBlocking = blocking || cs->restorePending;
        cs->restorePending = 0;
        if (blocking && Tcl_SetChannelOption(w->interp, w->chan, "-blocking",
                "0") != TCL_OK) {
            return TCL_ERROR;
        }
    }
    cs->nbUsers++;
    w->flags |= W_SETNB;
    return TCL_OK;
}

/*
 * Put a channel back into blocking mode.  Tcl stops a background flush when
 * a channel becomes blocking, so with output still queued (a write that was
 * abandoned: timeout, deleted coroutine) the channel stays non-blocking until
 * the queue has drained, watched by the lazy writable handler.
 */
void
Weft_RestoreBlocking(ChanState *cs)
{
    if (Tcl_OutputBuffered(cs->chan) == 0) {
        cs->restorePending = 0;
        Tcl_SetChannelOption(NULL, cs->chan, "-blocking", "1");
        return;
    }
    cs->restorePending = 1;
    Weft_EnsureHandler(cs, DIR_WRITE);
}

/* ------------------------------------------------------------- wake-ups */

static void
ChanReady(ChanState *cs, int dir)
{
    Wait *w = cs->waiter[dir];

    if (w == NULL) {
        if (dir == DIR_WRITE && cs->restorePending && cs->nbUsers == 0) {
            /* Tcl reports writable only once its background flush is done. */
            if (Tcl_OutputBuffered(cs->chan) > 0) {
                return;
            }
            cs->restorePending = 0;
            Tcl_SetChannelOption(NULL, cs->chan, "-blocking", "1");
        }
        Weft_DropHandler(cs, dir, 0);   /* nobody waits: remove it now */
        return;
    }
    Weft_Wake(w);
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

