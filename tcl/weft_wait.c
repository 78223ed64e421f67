/*
 * weft_wait.c -- suspending a Tcl coroutine until something wakes it.
 *
 * A command that cannot complete at once creates a Wait; its step arms a
 * wake-up (a channel handler through weft_chan.c, or a timer here) and
 * returns STEP_WAIT; Drive then yields through ::yield with
 * Tcl_NRAddCallback + Tcl_NREvalObj.  Whatever wakes it resumes the
 * coroutine by its current name, and the step runs again; a spurious
 * resumption just waits again.  Finish() is the only place a Wait is freed.
 *
 * This file knows nothing of channels: the layers above plug in through the
 * Wait's callbacks (weft_tcl.h).  Each coroutine gets one command trace
 * (delete + rename) for its lifetime; deletion drops its wait's wake-up
 * sources before Tcl rewinds the coroutine (which runs Resumed once more).
 */
#include "weft_tcl.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Tcl timers take an int of milliseconds: longer sleeps are chained. */
#define MAX_TIMER_MS (1 << 30)

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
Weft_NewWait(WeftInterp *wi, enum WaitOp op, Tcl_Obj *coroName,
        const char *cmdName)
{
    Wait *w = (Wait *) ckalloc(sizeof(Wait));

    memset(w, 0, sizeof *w);
    w->wi = wi;
    w->interp = wi->interp;
    w->op = op;
    w->dir = (op == OP_WRITE) ? DIR_WRITE : DIR_READ;
    w->rec = GetCoroRec(wi, coroName);
    w->want = -1;
    w->cmdName = cmdName;
    wi->liveWaits++;
    Tcl_Preserve(wi);
    return w;
}

/* Remove every wake-up source of a Wait. */
void
Weft_Disarm(Wait *w)
{
    WeftInterp *wi = w->wi;

    if (w->unhook != NULL) {
        w->unhook(w);
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

/* Free a Wait that never ran (setup failed) or whose call is over. */
void
Weft_FreeWait(Wait *w)
{
    WeftInterp *wi = w->wi;

    Weft_Disarm(w);
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
    if (code != TCL_OK && w->abandon != NULL) {
        w->abandon(w);
    }
    Weft_Disarm(w);
    if (w->release != NULL) {
        w->release(w, code);
    }
    Weft_FreeWait(w);
    return code;
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
    int r = w->step(w);

    w->flags &= ~W_FIRED;
    if (r != STEP_WAIT) {
        return Finish(w, r);
    }
    if (w->flags & W_TIMEDOUT) {
        Weft_Error(interp, "TIMEOUT", "%s: timed out after %d ms on \"%s\"",
                w->cmdName, w->timeout,
                w->chan ? Tcl_GetChannelName(w->chan) : "");
        return Finish(w, TCL_ERROR);
    }
    if (w->rec == NULL) {
        Weft_Error(interp, "NOCORO", "%s: cannot find the current "
                "coroutine", w->cmdName);
        return Finish(w, TCL_ERROR);
    }
    w->rec->wait = w;
    if (w->timer == NULL && w->timeout > 0 && w->op != OP_SLEEP
            && !(w->flags & W_TIMEDOUT)) {
        w->timer = Tcl_CreateTimerHandler(w->timeout, TimerFired, w);
        w->wi->armed++;
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

/*
 * The coroutine cannot yield: a C command that is not NRE-enabled lies
 * between it and this call (lsort -command, a trace, an event handler run by
 * a vwait inside the coroutine).  Finish the call as it would finish outside
 * a coroutine, so that it never fails with part of its work done.
 */
static int
FinishBlocking(Wait *w)
{
    Tcl_ResetResult(w->interp);
    Weft_Disarm(w);
    if (w->block == NULL) {
        Weft_Error(w->interp, "NOCORO", "%s: cannot wait here: the caller "
                "cannot yield (the coroutine is called through a C command "
                "that is not NRE-enabled)", w->cmdName);
        return Finish(w, TCL_ERROR);
    }
    return Finish(w, w->block(w));
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
            return FinishBlocking(w);
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

static Tcl_WideInt
MsUntil(const Tcl_Time *t)
{
    Tcl_Time now;

    Tcl_GetTime(&now);
    return ((Tcl_WideInt) t->sec - now.sec) * 1000
            + (t->usec - now.usec + 999) / 1000;
}

static void
ArmSleepTimer(Wait *w)
{
    Tcl_WideInt left = MsUntil(&w->deadline);

    if (left < 0) {
        left = 0;
    }
    w->timer = Tcl_CreateTimerHandler(
            (int) (left > MAX_TIMER_MS ? MAX_TIMER_MS : left), TimerFired, w);
    w->wi->armed++;
}

static void
TimerFired(ClientData cd)
{
    Wait *w = (Wait *) cd;

    w->timer = NULL;
    w->wi->armed--;
    if (w->op == OP_SLEEP) {
        if (MsUntil(&w->deadline) > 0) {
            ArmSleepTimer(w);   /* a chained part of a long sleep */
            return;
        }
        w->flags |= W_SLEPT;
    } else {
        w->flags |= W_TIMEDOUT;
    }
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

/* Start the timer of weft::sleep: ms from now, however long. */
void
Weft_StartSleep(Wait *w, Tcl_WideInt ms)
{
    Tcl_GetTime(&w->deadline);
    w->deadline.sec += (long) (ms / 1000);
    w->deadline.usec += (long) (ms % 1000) * 1000;
    if (w->deadline.usec >= 1000000) {
        w->deadline.sec++;
        w->deadline.usec -= 1000000;
    }
    ArmSleepTimer(w);
}

/* Milliseconds left of a weft::sleep. */
Tcl_WideInt
Weft_SleepLeft(Wait *w)
{
    Tcl_WideInt left = MsUntil(&w->deadline);

    return left > 0 ? left : 0;
}

/* Block the thread for ms milliseconds, however long. */
void
Weft_SleepBlocking(Tcl_WideInt ms)
{
    while (ms > 0) {
        int part = ms > INT_MAX ? INT_MAX : (int) ms;

        Tcl_Sleep(part);
        ms -= part;
    }
}
