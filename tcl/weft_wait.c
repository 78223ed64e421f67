/*
 * weft_wait.c -- suspending a Tcl coroutine until a channel is ready.
 *
 * A command that cannot complete at once creates a Wait, registers it as
 * the channel's waiter for one direction, makes sure a channel handler for
 * that direction exists (and arms the channel's -timeout timer), then yields
 * through ::yield with Tcl_NRAddCallback + Tcl_NREvalObj.  When the notifier
 * fires, the coroutine is resumed by its current name.  After every
 * resumption the command's step runs again; spurious resumptions just wait
 * again.  Finish() is the only place a Wait is freed.
 *
 * Channel state and handlers are in weft_chan.c.  Each coroutine gets one
 * command trace
 * (delete + rename) for its lifetime; deletion drops its wait's wake-up
 * sources before Tcl rewinds the coroutine (which runs Resumed once more).
 */
#include "weft_tcl.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int  Drive(Wait *w);
static int  Resumed(ClientData data[], Tcl_Interp *interp, int result);
static void TimerFired(ClientData cd);
static void IdleWake(ClientData cd);
static void CoroTrace(ClientData cd, Tcl_Interp *interp,
        const char *oldName, const char *newName, int flags);

int
Weft_Error(Tcl_Interp *interp, const char *code, const char *fmt, ...)
{
    char buf[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    Tcl_SetObjResult(interp, Tcl_NewStringObj(buf, -1));
    Tcl_SetErrorCode(interp, "WEFT", code, (char *) NULL);
    return TCL_ERROR;
}

/*
 * The fully qualified name of the running coroutine (a new reference), or
 * NULL outside a coroutine.  Calls [info coroutine]'s implementation
 * directly; it only touches the interpreter result.
 */
Tcl_Obj *
Weft_CurrentCoroutine(WeftInterp *wi)
{
    Tcl_Interp *interp = wi->interp;
    Tcl_Obj *res;
    int code;

    if (wi->infoCoroProc != NULL) {
        code = wi->infoCoroProc(wi->infoCoroData, interp, 1, &wi->infoCoroWord);
    } else {
        Tcl_Obj *words[2];
        words[0] = Tcl_NewStringObj("::info", -1);
        words[1] = Tcl_NewStringObj("coroutine", -1);
        Tcl_IncrRefCount(words[0]);
        Tcl_IncrRefCount(words[1]);
        code = Tcl_EvalObjv(interp, 2, words, TCL_EVAL_GLOBAL);
        Tcl_DecrRefCount(words[0]);
        Tcl_DecrRefCount(words[1]);
    }
    if (code != TCL_OK) {
        Tcl_ResetResult(interp);
        return NULL;
    }
    res = Tcl_GetObjResult(interp);
    if (Tcl_GetCharLength(res) == 0) {
        Tcl_ResetResult(interp);
        return NULL;
    }
    Tcl_IncrRefCount(res);
    Tcl_ResetResult(interp);
    return res;
}

/* ------------------------------------------------------------ coroutines */

static CoroRec *
GetCoroRec(WeftInterp *wi, Tcl_Obj *coroName)
{
    Tcl_Command token = Tcl_GetCommandFromObj(wi->interp, coroName);
    Tcl_HashEntry *he;
    CoroRec *rec;
    int isNew;

    if (token == NULL) {
        return NULL;
    }
    he = Tcl_CreateHashEntry(&wi->coros, (const char *) token, &isNew);
    if (!isNew) {
        return (CoroRec *) Tcl_GetHashValue(he);
    }
    rec = (CoroRec *) ckalloc(sizeof(CoroRec));
    rec->wi = wi;
    rec->token = token;
    rec->entry = he;
    rec->name = coroName;
    Tcl_IncrRefCount(rec->name);
    rec->wait = NULL;
    Tcl_SetHashValue(he, rec);
    if (Tcl_TraceCommand(wi->interp, Tcl_GetString(coroName),
            TCL_TRACE_DELETE | TCL_TRACE_RENAME, CoroTrace, rec) != TCL_OK) {
        Tcl_DeleteHashEntry(he);
        Tcl_DecrRefCount(rec->name);
        ckfree((char *) rec);
        return NULL;
    }
    return rec;
}

static void
FreeCoroRec(CoroRec *rec)
{
    Wait *w = rec->wait;

    if (w != NULL) {
        /* Nothing may resume it any more; Tcl rewinds it (Resumed). */
        w->flags |= W_DELETED;
        Weft_Disarm(w);
        if (w->cs != NULL && !w->cs->restorePending) {
            Weft_DropHandler(w->cs, w->dir, 0);
        }
        w->rec = NULL;
    }
    Tcl_DeleteHashEntry(rec->entry);
    if (rec->name) {
        Tcl_DecrRefCount(rec->name);
    }
    ckfree((char *) rec);
}

static void
CoroTrace(ClientData cd, Tcl_Interp *interp, const char *oldName,
        const char *newName, int flags)
{
    CoroRec *rec = (CoroRec *) cd;

    (void) interp;
    (void) oldName;
    if ((flags & TCL_TRACE_RENAME) && newName != NULL && *newName) {
        if (rec->name) {
            Tcl_DecrRefCount(rec->name);
            rec->name = NULL;   /* recomputed from the token when needed */
        }
        return;
    }
    FreeCoroRec(rec);           /* deleted (Tcl removes the trace) */
}

void
Weft_FreeAllCoroRecs(WeftInterp *wi)
{
    Tcl_HashSearch s;
    Tcl_HashEntry *he;

    while ((he = Tcl_FirstHashEntry(&wi->coros, &s)) != NULL) {
        CoroRec *rec = (CoroRec *) Tcl_GetHashValue(he);
        Tcl_Obj *name = Tcl_NewObj();

        Tcl_IncrRefCount(name);
        Tcl_GetCommandFullName(wi->interp, rec->token, name);
        Tcl_UntraceCommand(wi->interp, Tcl_GetString(name),
                TCL_TRACE_DELETE | TCL_TRACE_RENAME, CoroTrace, rec);
        Tcl_DecrRefCount(name);
        FreeCoroRec(rec);
    }
}

static Tcl_Obj *
CoroName(CoroRec *rec)
{
    if (rec->name == NULL) {
        rec->name = Tcl_NewObj();
        Tcl_IncrRefCount(rec->name);
        Tcl_GetCommandFullName(rec->wi->interp, rec->token, rec->name);
    }
    return rec->name;
}

/* ------------------------------------------------------------------- waits */

Wait *
Weft_NewWait(WeftInterp *wi, enum WaitOp op, ChanState *cs, Tcl_Obj *coroName,
        const char *cmdName)
{
    Wait *w = (Wait *) ckalloc(sizeof(Wait));

    memset(w, 0, sizeof *w);
    w->wi = wi;
    w->interp = wi->interp;
    w->op = op;
    w->cs = cs;
    w->chan = cs ? cs->chan : NULL;
    w->dir = (op == OP_WRITE) ? DIR_WRITE : DIR_READ;
    w->rec = GetCoroRec(wi, coroName);
    w->want = -1;
    w->cmdName = cmdName;
    wi->liveWaits++;
    Tcl_Preserve(wi);
    return w;
}

/* Remove every wake-up source of a Wait (lazy channel handlers stay). */
void
Weft_Disarm(Wait *w)
{
    WeftInterp *wi = w->wi;

    if (w->waiting) {
        if (w->cs && w->cs->waiter[w->dir] == w) {
            w->cs->waiter[w->dir] = NULL;
        }
        w->waiting = 0;
        wi->armed--;
    }
    if (w->timer) {
        Tcl_DeleteTimerHandler(w->timer);
        w->timer = NULL;
        wi->armed--;
    }
    if (w->flags & W_IDLE) {
        Tcl_CancelIdleCall(IdleWake, w);
        w->flags &= ~W_IDLE;
        wi->armed--;
    }
    if (w->rec && w->rec->wait == w) {
        w->rec->wait = NULL;
    }
}

void
Weft_FreeWait(Wait *w)
{
    WeftInterp *wi = w->wi;

    Weft_Disarm(w);
    if ((w->flags & W_SETNB) && w->cs && --w->cs->nbUsers == 0
            && w->cs->wasBlocking) {
        Weft_RestoreBlocking(w->cs);
    }
    if (w->varName) {
        Tcl_DecrRefCount(w->varName);
    }
    if (w->acc) {
        Tcl_DecrRefCount(w->acc);
    }
    wi->liveWaits--;
    ckfree((char *) w);
    Tcl_Release(wi);
}

static int
Finish(Wait *w, int code)
{
    /* Keep the channel handler only for the likely next wait after a
     * successful call; errors (timeout, deletion...) drop it at once. */
    if (code != TCL_OK && w->cs != NULL) {
        Weft_DropHandler(w->cs, w->dir, 0);
    }
    Weft_FreeWait(w);           /* may re-arm the writable handler */
    return code;
}

/* Arm the wake-up sources for the coming yield. */
static int
Arm(Wait *w)
{
    WeftInterp *wi = w->wi;
    ChanState *cs = w->cs;

    if (w->rec == NULL) {
        return Weft_Error(w->interp, "NOCORO", "%s: cannot find the current "
                "coroutine", w->cmdName);
    }
    w->rec->wait = w;
    if (cs != NULL && w->wantMask) {
        if (!w->waiting) {
            cs->waiter[w->dir] = w;
            w->waiting = 1;
            wi->armed++;
        }
        Weft_EnsureHandler(cs, w->dir);
        if (!w->timerStarted && cs->timeout > 0) {
            w->timer = Tcl_CreateTimerHandler(cs->timeout, TimerFired, w);
            w->timerStarted = 1;
            wi->armed++;
        }
    }
    return TCL_OK;
}

int
Weft_Run(Wait *w)
{
    return Drive(w);
}

static int
Drive(Wait *w)
{
    Tcl_Interp *interp = w->interp;
    int r;

    if (w->skipStep) {
        w->skipStep = 0;
        r = STEP_WAIT;
    } else {
        r = w->step(w);
    }
    if (r != STEP_WAIT) {
        return Finish(w, r);
    }
    if (w->flags & W_TIMEDOUT) {
        Weft_Error(interp, "TIMEOUT", "%s: timed out after %d ms on \"%s\"",
                w->cmdName, w->cs ? w->cs->timeout : 0,
                w->chan ? Tcl_GetChannelName(w->chan) : "");
        return Finish(w, TCL_ERROR);
    }
    if (Arm(w) != TCL_OK) {
        return Finish(w, TCL_ERROR);
    }
    Tcl_NRAddCallback(interp, Resumed, w, NULL, NULL, NULL);
    return Tcl_NREvalObj(interp, w->wi->yieldCmd, 0);
}

static int
CantYield(Tcl_Interp *interp, int result)
{
    Tcl_Obj *opts = Tcl_GetReturnOptions(interp, result);
    Tcl_Obj *key = Tcl_NewStringObj("-errorcode", -1);
    Tcl_Obj *ec = NULL;
    int found = 0;

    Tcl_IncrRefCount(opts);
    Tcl_IncrRefCount(key);
    if (Tcl_DictObjGet(NULL, opts, key, &ec) == TCL_OK && ec != NULL) {
        found = strstr(Tcl_GetString(ec), "CANT_YIELD") != NULL;
    }
    Tcl_DecrRefCount(key);
    Tcl_DecrRefCount(opts);
    return found;
}

/* NRE callback: the yield returned (the coroutine was resumed) or failed. */
static int
Resumed(ClientData data[], Tcl_Interp *interp, int result)
{
    Wait *w = (Wait *) data[0];

    if (w->flags & W_DELETED) {
        Weft_Error(interp, "DELETED", "%s: coroutine deleted while waiting",
                w->cmdName);
        return Finish(w, TCL_ERROR);
    }
    if (result != TCL_OK) {
        if (CantYield(interp, result)) {
            Weft_Error(interp, "NOCORO", "%s: cannot wait here: the caller "
                    "cannot yield (the coroutine is called through a C "
                    "command that is not NRE-enabled)", w->cmdName);
        }
        return Finish(w, TCL_ERROR);
    }
    Tcl_ResetResult(interp);
    if (w->flags & W_CLOSED) {
        Weft_Error(interp, "CLOSED", "%s: channel closed while waiting",
                w->cmdName);
        return Finish(w, TCL_ERROR);
    }
    return Drive(w);
}

/* ------------------------------------------------------------- wake-ups */

void
Weft_Wake(Wait *w)
{
    Tcl_Interp *interp = w->interp;
    Tcl_Obj *name;
    int code;

    if ((w->flags & W_DELETED) || w->rec == NULL) {
        return;
    }
    name = CoroName(w->rec);
    Tcl_IncrRefCount(name);
    Tcl_Preserve(interp);
    /* w may be freed by the time this returns. */
    code = Tcl_EvalObjv(interp, 1, &name, TCL_EVAL_GLOBAL);
    if (code == TCL_ERROR) {
        Tcl_BackgroundException(interp, code);
    }
    Tcl_ResetResult(interp);
    Tcl_DecrRefCount(name);
    Tcl_Release(interp);
}

static void
TimerFired(ClientData cd)
{
    Wait *w = (Wait *) cd;

    w->timer = NULL;
    w->wi->armed--;
    w->flags |= (w->op == OP_SLEEP) ? W_SLEPT : W_TIMEDOUT;
    Weft_Wake(w);
}

static void
IdleWake(ClientData cd)
{
    Wait *w = (Wait *) cd;

    w->flags &= ~W_IDLE;
    w->wi->armed--;
    Weft_Wake(w);
}

/* Resume a waiter from an idle callback (used when its channel closes). */
void
Weft_WakeLater(Wait *w)
{
    if (!(w->flags & (W_IDLE | W_DELETED))) {
        w->flags |= W_IDLE;
        w->wi->armed++;
        Tcl_DoWhenIdle(IdleWake, w);
    }
}

/* Start the timer of weft::sleep. */
void
Weft_StartSleep(Wait *w, int ms)
{
    w->timer = Tcl_CreateTimerHandler(ms, TimerFired, w);
    w->timerStarted = 1;
    w->wi->armed++;
}
