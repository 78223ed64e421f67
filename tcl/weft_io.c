/*
 * weft_io.c -- weft::gets, weft::read, weft::puts, weft::flush, weft::sleep.
 *
 * Each command is NRE-enabled.  Outside a coroutine it behaves like its Tcl
 * counterpart on a blocking channel.  Inside a coroutine it first tries to
 * complete without waiting (channel temporarily non-blocking) and otherwise
 * suspends the coroutine through weft_wait.c.
 */
#include "weft_tcl.h"

#include <string.h>


static const char *
ChanName(Tcl_Channel chan)
{
    return Tcl_GetChannelName(chan);
}

static int
IoError(Tcl_Interp *interp, const char *what, Tcl_Channel chan)
{
    const char *msg = Tcl_PosixError(interp);

    Tcl_SetObjResult(interp, Tcl_ObjPrintf("error %s \"%s\": %s", what,
            ChanName(chan), msg));
    return TCL_ERROR;
}

static Tcl_Channel
GetChan(Tcl_Interp *interp, Tcl_Obj *nameObj, int needMode)
{
    int mode;
    Tcl_Channel chan = Tcl_GetChannel(interp, Tcl_GetString(nameObj), &mode);

    if (chan == NULL) {
        return NULL;
    }
    if (!(mode & needMode)) {
        Tcl_SetObjResult(interp, Tcl_ObjPrintf("channel \"%s\" wasn't opened "
                "for %s", Tcl_GetString(nameObj),
                needMode == TCL_READABLE ? "reading" : "writing"));
        Tcl_SetErrorCode(interp, "TCL", "OPERATION", "CHANNEL",
                needMode == TCL_READABLE ? "NOT_READABLE" : "NOT_WRITABLE",
                (char *) NULL);
        return NULL;
    }
    return chan;
}

/* Whether chan is in blocking mode. */
static int
WasBlocking(Tcl_Interp *interp, Tcl_Channel chan, int *blocking)
{
    Tcl_DString ds;

    Tcl_DStringInit(&ds);
    if (Tcl_GetChannelOption(interp, chan, "-blocking", &ds) != TCL_OK) {
        Tcl_DStringFree(&ds);
        return TCL_ERROR;
    }
    *blocking = strcmp(Tcl_DStringValue(&ds), "0") != 0;
    Tcl_DStringFree(&ds);
    return TCL_OK;
}

/*
 * Outside a coroutine the commands block: put chan in blocking mode for the
 * call (EnterBlocking tells whether it already was) and back after it.
 */
static int
EnterBlocking(Tcl_Interp *interp, Tcl_Channel chan, int *wasBlocking)
{
    if (WasBlocking(interp, chan, wasBlocking) != TCL_OK) {
        return TCL_ERROR;
    }
    if (!*wasBlocking && Tcl_SetChannelOption(interp, chan, "-blocking", "1")
            != TCL_OK) {
        return TCL_ERROR;
    }
    return TCL_OK;
}

static void
LeaveBlocking(Tcl_Channel chan, int wasBlocking)
{
    if (!wasBlocking) {
        Tcl_SetChannelOption(NULL, chan, "-blocking", "0");
    }
}

static int
BusyError(Tcl_Interp *interp, const char *cmd, Tcl_Channel chan, int dir)
{
    return Weft_Error(interp, "BUSY", "%s: another coroutine is already "
            "waiting to %s \"%s\"", cmd, dir == DIR_READ ? "read" : "write",
            ChanName(chan));
}

/* ------------------------------------------------------------------ gets */

static int
GetsResult(Tcl_Interp *interp, Tcl_Obj *line, int n, Tcl_Obj *varName)
{
    if (varName == NULL) {
        Tcl_SetObjResult(interp, line);
        return TCL_OK;
    }
    if (Tcl_ObjSetVar2(interp, varName, NULL, line, TCL_LEAVE_ERR_MSG)
            == NULL) {
        return TCL_ERROR;
    }
    Tcl_SetObjResult(interp, Tcl_NewIntObj(n));
    return TCL_OK;
}

static int
StepGets(Wait *w)
{
    Tcl_Interp *interp = w->interp;
    Tcl_Channel chan = w->chan;
    Tcl_Obj *line = Tcl_NewObj();
    int n, code;
    int maxline = w->cs->maxline;

    Tcl_IncrRefCount(line);
    n = Tcl_GetsObj(chan, line);
    if (n >= 0) {
        if (maxline > 0 && n > maxline) {
            code = Weft_Error(interp, "MAXLINE", "%s: line longer than %d "
                    "bytes on \"%s\"", w->cmdName, maxline, ChanName(chan));
        } else {
            code = GetsResult(interp, line, n, w->varName);
        }
    } else if (Tcl_Eof(chan)) {
        code = GetsResult(interp, line, -1, w->varName);
    } else if (Tcl_InputBlocked(chan)) {
        if (maxline > 0 && Tcl_InputBuffered(chan) > maxline) {
            code = Weft_Error(interp, "MAXLINE", "%s: line longer than %d "
                    "bytes on \"%s\"", w->cmdName, maxline, ChanName(chan));
        } else {
            w->wantMask = TCL_READABLE;
            code = STEP_WAIT;
        }
    } else {
        code = IoError(interp, "reading", chan);
    }
    Tcl_DecrRefCount(line);
    return code;
}

static int
BlockingGets(Tcl_Interp *interp, Tcl_Channel chan, Tcl_Obj *varName)
{
    int blocking, n, code;
    Tcl_Obj *line;

    if (EnterBlocking(interp, chan, &blocking) != TCL_OK) {
        return TCL_ERROR;
    }
    line = Tcl_NewObj();
    Tcl_IncrRefCount(line);
    n = Tcl_GetsObj(chan, line);
    if (n < 0 && !Tcl_Eof(chan) && !Tcl_InputBlocked(chan)) {
        code = IoError(interp, "reading", chan);
    } else {
        code = GetsResult(interp, line, n, varName);
    }
    Tcl_DecrRefCount(line);
    LeaveBlocking(chan, blocking);
    return code;
}

static int
GetsNR(ClientData cd, Tcl_Interp *interp, int objc, Tcl_Obj *const objv[])
{
    WeftInterp *wi = (WeftInterp *) cd;
    Tcl_Channel chan;
    ChanState *cs;
    Tcl_Obj *coro;
    Wait *w;
    int blocking;

    if (objc < 2 || objc > 3) {
        Tcl_WrongNumArgs(interp, 1, objv, "channelId ?varName?");
        return TCL_ERROR;
    }
    if ((chan = GetChan(interp, objv[1], TCL_READABLE)) == NULL) {
        return TCL_ERROR;
    }
    cs = Weft_ChanState(wi, chan, 0);
    if (cs != NULL && cs->waiter[DIR_READ] != NULL) {
        return BusyError(interp, "weft::gets", chan, DIR_READ);
    }
    if (WasBlocking(interp, chan, &blocking) != TCL_OK) {
        return TCL_ERROR;
    }
    if (!blocking) {
        /*
         * Fast path: a complete line (or EOF) already available gives the
         * same result in or outside a coroutine, so no need to ask which.
         */
        int maxline = cs ? cs->maxline : WEFT_DEFAULT_MAXLINE;
        Tcl_Obj *line = Tcl_NewObj();
        int n;

        Tcl_IncrRefCount(line);
        n = Tcl_GetsObj(chan, line);
        if ((n >= 0 && (maxline == 0 || n <= maxline)) || (n < 0
                && (Tcl_Eof(chan) || !Tcl_InputBlocked(chan)))) {
            int code = (n < 0 && !Tcl_Eof(chan))
                    ? IoError(interp, "reading", chan)
                    : GetsResult(interp, line, n, objc == 3 ? objv[2] : NULL);
            Tcl_DecrRefCount(line);
            return code;
        }
        if (n >= 0) {
            /* Over -maxline: an error in a coroutine, the line outside. */
            if ((coro = Weft_CurrentCoroutine(wi)) == NULL) {
                int code = GetsResult(interp, line, n,
                        objc == 3 ? objv[2] : NULL);
                Tcl_DecrRefCount(line);
                return code;
            }
            Tcl_DecrRefCount(coro);
            Tcl_DecrRefCount(line);
            return Weft_Error(interp, "MAXLINE", "weft::gets: line longer "
                    "than %d bytes on \"%s\"", maxline, ChanName(chan));
        }
        Tcl_DecrRefCount(line);
    }
    if ((coro = Weft_CurrentCoroutine(wi)) == NULL) {
        return BlockingGets(interp, chan, objc == 3 ? objv[2] : NULL);
    }
    cs = Weft_ChanState(wi, chan, 1);
    w = Weft_NewWait(wi, OP_GETS, cs, coro, "weft::gets");
    Tcl_DecrRefCount(coro);
    if (objc == 3) {
        w->varName = objv[2];
        Tcl_IncrRefCount(w->varName);
    }
    w->step = StepGets;
    if (Weft_SetNonBlockingKnown(w, blocking) != TCL_OK) {
        Weft_FreeWait(w);
        return TCL_ERROR;
    }
    if (!blocking && !(cs->maxline > 0
            && Tcl_InputBuffered(chan) > cs->maxline)) {
        /* The fast path above just found no complete line. */
        w->wantMask = TCL_READABLE;
        w->skipStep = 1;
    }
    return Weft_Run(w);
}

/* ------------------------------------------------------------------ read */

static void
StripNewline(Tcl_Obj *obj)
{
    int len;
    const char *s = Tcl_GetStringFromObj(obj, &len);

    if (len > 0 && s[len - 1] == '\n') {
        Tcl_SetObjLength(obj, len - 1);
    }
}

static int
StepRead(Wait *w)
{
    Tcl_Channel chan = w->chan;
    int i;

    for (i = 0; i < 64; i++) {
        int toRead = -1, n;

        if (w->want >= 0) {
            toRead = w->want - Tcl_GetCharLength(w->acc);
            if (toRead <= 0) {
                break;
            }
        }
        n = Tcl_ReadChars(chan, w->acc, toRead, 1);
        if (n < 0) {
            return IoError(w->interp, "reading", chan);
        }
        if (Tcl_Eof(chan)) {
            break;
        }
        if (w->want >= 0 && Tcl_GetCharLength(w->acc) >= w->want) {
            break;
        }
        if (Tcl_InputBlocked(chan)) {
            w->wantMask = TCL_READABLE;
            return STEP_WAIT;
        }
    }
    if (w->nonewline && Tcl_Eof(chan)) {
        StripNewline(w->acc);
    }
    Tcl_SetObjResult(w->interp, w->acc);
    return TCL_OK;
}

static int
BlockingRead(Tcl_Interp *interp, Tcl_Channel chan, int want, int nonewline)
{
    int blocking, code = TCL_OK;
    Tcl_Obj *acc;

    if (EnterBlocking(interp, chan, &blocking) != TCL_OK) {
        return TCL_ERROR;
    }
    acc = Tcl_NewObj();
    Tcl_IncrRefCount(acc);
    if (Tcl_ReadChars(chan, acc, want, 0) < 0) {
        code = IoError(interp, "reading", chan);
    } else {
        if (nonewline && Tcl_Eof(chan)) {
            StripNewline(acc);
        }
        Tcl_SetObjResult(interp, acc);
    }
    Tcl_DecrRefCount(acc);
    LeaveBlocking(chan, blocking);
    return code;
}

static int
ReadNR(ClientData cd, Tcl_Interp *interp, int objc, Tcl_Obj *const objv[])
{
    WeftInterp *wi = (WeftInterp *) cd;
    Tcl_Channel chan;
    ChanState *cs;
    Tcl_Obj *coro;
    Wait *w;
    int nonewline = 0, want = -1, i = 1;

    if (objc >= 2 && strcmp(Tcl_GetString(objv[1]), "-nonewline") == 0) {
        nonewline = 1;
        i = 2;
    }
    if (objc - i < 1 || objc - i > 2 || (nonewline && objc - i != 1)) {
        Tcl_WrongNumArgs(interp, 1, objv, "channelId ?numChars?\" or \""
                "weft::read ?-nonewline? channelId");
        return TCL_ERROR;
    }
    if ((chan = GetChan(interp, objv[i], TCL_READABLE)) == NULL) {
        return TCL_ERROR;
    }
    if (objc - i == 2) {
        if (Tcl_GetIntFromObj(interp, objv[i + 1], &want) != TCL_OK) {
            return TCL_ERROR;
        }
        if (want < 0) {
            Tcl_SetObjResult(interp, Tcl_ObjPrintf("expected non-negative "
                    "integer but got \"%s\"", Tcl_GetString(objv[i + 1])));
            Tcl_SetErrorCode(interp, "TCL", "VALUE", "NUMBER", (char *) NULL);
            return TCL_ERROR;
        }
    }
    if ((coro = Weft_CurrentCoroutine(wi)) == NULL) {
        return BlockingRead(interp, chan, want, nonewline);
    }
    cs = Weft_ChanState(wi, chan, 1);
    if (cs->waiter[DIR_READ] != NULL) {
        Tcl_DecrRefCount(coro);
        return BusyError(interp, "weft::read", chan, DIR_READ);
    }
    w = Weft_NewWait(wi, OP_READ, cs, coro, "weft::read");
    Tcl_DecrRefCount(coro);
    w->want = want;
    w->nonewline = nonewline;
    w->acc = Tcl_NewObj();
    Tcl_IncrRefCount(w->acc);
    w->step = StepRead;
    if (Weft_SetNonBlocking(w) != TCL_OK) {
        Weft_FreeWait(w);
        return TCL_ERROR;
    }
    return Weft_Run(w);
}

/* ------------------------------------------------------------ puts/flush */

/* Wait until the output queue is empty, then surface any write error. */
static int
StepDrain(Wait *w)
{
    /* Cheap when a background flush is already scheduled. */
    if (Tcl_Flush(w->chan) != TCL_OK) {
        return IoError(w->interp, "flushing", w->chan);
    }
    if (Tcl_OutputBuffered(w->chan) > 0) {
        w->wantMask = TCL_WRITABLE;
        return STEP_WAIT;
    }
    if (Tcl_Flush(w->chan) != TCL_OK) {
        return IoError(w->interp, "flushing", w->chan);
    }
    Tcl_ResetResult(w->interp);
    return TCL_OK;
}

static int
StepDone(Wait *w)
{
    Tcl_ResetResult(w->interp);
    return TCL_OK;
}

/* Output bytes a puts may leave queued before it waits for the drain. */
static int
OutputLimit(Wait *w)
{
    Tcl_DString ds;
    int full;

    if (!w->cs->wasBlocking) {
        return w->cs->maxoutput;
    }
    /* Originally blocking: behave like a blocking write would. */
    Tcl_DStringInit(&ds);
    Tcl_GetChannelOption(NULL, w->chan, "-buffering", &ds);
    full = strcmp(Tcl_DStringValue(&ds), "full") == 0;
    Tcl_DStringFree(&ds);
    return full ? Tcl_GetChannelBufferSize(w->chan) : 0;
}

static int
DoWrite(Tcl_Interp *interp, Tcl_Channel chan, Tcl_Obj *str, int newline)
{
    if (str == NULL) {
        return Tcl_Flush(chan) == TCL_OK ? TCL_OK
                : IoError(interp, "flushing", chan);
    }
    if (Tcl_WriteObj(chan, str) < 0
            || (newline && Tcl_WriteChars(chan, "\n", 1) < 0)) {
        return IoError(interp, "writing", chan);
    }
    return TCL_OK;
}

/* Outside a coroutine: bound the queue by flushing as a blocking write. */
static int
BlockingFlush(Tcl_Interp *interp, Tcl_Channel chan)
{
    int code = TCL_OK;

    Tcl_SetChannelOption(NULL, chan, "-blocking", "1");
    if (Tcl_Flush(chan) != TCL_OK) {
        code = IoError(interp, "flushing", chan);
    }
    Tcl_SetChannelOption(NULL, chan, "-blocking", "0");
    return code;
}

static int
WriteNR(WeftInterp *wi, Tcl_Interp *interp, Tcl_Channel chan, Tcl_Obj *str,
        int newline, const char *cmdName)
{
    ChanState *cs = Weft_ChanState(wi, chan, 0);
    Tcl_Obj *coro;
    Wait *w;
    int blocking;

    if (cs != NULL && cs->waiter[DIR_WRITE] != NULL) {
        return BusyError(interp, cmdName, chan, DIR_WRITE);
    }
    if (WasBlocking(interp, chan, &blocking) != TCL_OK) {
        return TCL_ERROR;
    }
    if (!blocking) {
        /* Non-blocking channel: write now, wait only if over the limit. */
        int limit = str == NULL ? 0
                : cs ? cs->maxoutput : WEFT_DEFAULT_MAXOUTPUT;

        if (DoWrite(interp, chan, str, newline) != TCL_OK) {
            return TCL_ERROR;
        }
        Tcl_ResetResult(interp);
        if (Tcl_OutputBuffered(chan) <= limit) {
            return TCL_OK;
        }
        if ((coro = Weft_CurrentCoroutine(wi)) == NULL) {
            /* weft::flush outside a coroutine behaves like flush. */
            return str == NULL ? TCL_OK : BlockingFlush(interp, chan);
        }
        cs = Weft_ChanState(wi, chan, 1);
        w = Weft_NewWait(wi, OP_WRITE, cs, coro, cmdName);
        Tcl_DecrRefCount(coro);
        if (Weft_SetNonBlocking(w) != TCL_OK) {
            Weft_FreeWait(w);
            return TCL_ERROR;
        }
        w->step = StepDrain;
        return Weft_Run(w);
    }
    if ((coro = Weft_CurrentCoroutine(wi)) == NULL) {
        if (DoWrite(interp, chan, str, newline) != TCL_OK) {
            return TCL_ERROR;
        }
        Tcl_ResetResult(interp);
        return TCL_OK;
    }
    /* Blocking channel in a coroutine: write non-blocking, then wait. */
    cs = Weft_ChanState(wi, chan, 1);
    w = Weft_NewWait(wi, OP_WRITE, cs, coro, cmdName);
    Tcl_DecrRefCount(coro);
    if (Weft_SetNonBlocking(w) != TCL_OK) {
        Weft_FreeWait(w);
        return TCL_ERROR;
    }
    if (DoWrite(interp, chan, str, newline) != TCL_OK) {
        Weft_FreeWait(w);
        return TCL_ERROR;
    }
    if (str != NULL && Tcl_OutputBuffered(chan) <= OutputLimit(w)) {
        w->step = StepDone;
    } else {
        w->step = StepDrain;
    }
    return Weft_Run(w);
}

static int
PutsNR(ClientData cd, Tcl_Interp *interp, int objc, Tcl_Obj *const objv[])
{
    Tcl_Channel chan;
    Tcl_Obj *chanName = NULL, *str;
    int newline = 1;

    switch (objc) {
    case 2:
        str = objv[1];
        break;
    case 3:
        if (strcmp(Tcl_GetString(objv[1]), "-nonewline") == 0) {
            newline = 0;
        } else {
            chanName = objv[1];
        }
        str = objv[2];
        break;
    case 4:
        if (strcmp(Tcl_GetString(objv[1]), "-nonewline") != 0) {
            goto usage;
        }
        newline = 0;
        chanName = objv[2];
        str = objv[3];
        break;
    default:
    usage:
        Tcl_WrongNumArgs(interp, 1, objv, "?-nonewline? ?channelId? string");
        return TCL_ERROR;
    }
    if (chanName == NULL) {
        Tcl_Obj *so = Tcl_NewStringObj("stdout", -1);
        Tcl_IncrRefCount(so);
        chan = GetChan(interp, so, TCL_WRITABLE);
        Tcl_DecrRefCount(so);
    } else {
        chan = GetChan(interp, chanName, TCL_WRITABLE);
    }
    if (chan == NULL) {
        return TCL_ERROR;
    }
    return WriteNR((WeftInterp *) cd, interp, chan, str, newline,
            "weft::puts");
}

static int
FlushNR(ClientData cd, Tcl_Interp *interp, int objc, Tcl_Obj *const objv[])
{
    Tcl_Channel chan;

    if (objc != 2) {
        Tcl_WrongNumArgs(interp, 1, objv, "channelId");
        return TCL_ERROR;
    }
    if ((chan = GetChan(interp, objv[1], TCL_WRITABLE)) == NULL) {
        return TCL_ERROR;
    }
    return WriteNR((WeftInterp *) cd, interp, chan, NULL, 0, "weft::flush");
}

/* ----------------------------------------------------------------- sleep */

static int
StepSleep(Wait *w)
{
    if (w->flags & W_SLEPT) {
        Tcl_ResetResult(w->interp);
        return TCL_OK;
    }
    w->wantMask = 0;
    return STEP_WAIT;
}

static int
SleepNR(ClientData cd, Tcl_Interp *interp, int objc, Tcl_Obj *const objv[])
{
    WeftInterp *wi = (WeftInterp *) cd;
    Tcl_Obj *coro;
    Wait *w;
    int ms;

    if (objc != 2) {
        Tcl_WrongNumArgs(interp, 1, objv, "ms");
        return TCL_ERROR;
    }
    if (Tcl_GetIntFromObj(interp, objv[1], &ms) != TCL_OK) {
        return TCL_ERROR;
    }
    if (ms < 0) {
        ms = 0;
    }
    if ((coro = Weft_CurrentCoroutine(wi)) == NULL) {
        Tcl_Sleep(ms);
        return TCL_OK;
    }
    w = Weft_NewWait(wi, OP_SLEEP, NULL, coro, "weft::sleep");
    Tcl_DecrRefCount(coro);
    w->step = StepSleep;
    Weft_StartSleep(w, ms);
    return Weft_Run(w);
}

/* ------------------------------------------------------------ registration */

#define DEF_OBJ(name) \
static int name##Obj(ClientData cd, Tcl_Interp *interp, int objc,        \
        Tcl_Obj *const objv[])                                           \
{                                                                        \
    return Tcl_NRCallObjProc(interp, name##NR, cd, objc, objv);          \
}
DEF_OBJ(Gets)
DEF_OBJ(Read)
DEF_OBJ(Puts)
DEF_OBJ(Flush)
DEF_OBJ(Sleep)

int
Weft_RegisterIoCommands(Tcl_Interp *interp, WeftInterp *wi)
{
    static const struct {
        const char *name;
        Tcl_ObjCmdProc *obj;
        Tcl_ObjCmdProc *nr;
    } cmds[] = {
        {"::weft::gets", GetsObj, GetsNR},
        {"::weft::read", ReadObj, ReadNR},
        {"::weft::puts", PutsObj, PutsNR},
        {"::weft::flush", FlushObj, FlushNR},
        {"::weft::sleep", SleepObj, SleepNR},
    };
    size_t i;

    for (i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (Tcl_NRCreateCommand(interp, cmds[i].name, cmds[i].obj, cmds[i].nr,
                wi, NULL) == NULL) {
            return TCL_ERROR;
        }
    }
    return TCL_OK;
}
