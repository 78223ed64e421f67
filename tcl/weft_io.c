/*
 * weft_io.c -- weft::gets, weft::read, weft::puts, weft::flush, weft::sleep.
 *
 * Each command is NRE-enabled.  Outside a coroutine, or where the coroutine
 * cannot yield, it behaves like its Tcl counterpart on a blocking channel.
 * Inside a coroutine it first tries to complete without waiting and
 * otherwise suspends the coroutine (weft_wait.c) until the channel's handler
 * (weft_chan.c) wakes it.  A channel that was blocking is non-blocking only
 * while a step tries it, or while a write waits for Tcl's flush.
 */
#include "weft_tcl.h"

#include <stdint.h>
#include <string.h>
#include <sys/stat.h>


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

/*
 * Whether I/O on chan can never wait: its handle is a regular file (or a
 * block device), which Linux reads and writes at once whatever O_NONBLOCK
 * says.  weft calls on such a blocking channel are the Tcl commands.
 */
static int
NeverBlocks(Tcl_Channel chan, int dir)
{
    ClientData h;
    struct stat st;

    if (Tcl_GetChannelHandle(chan, dir, &h) != TCL_OK
            || fstat((int) (intptr_t) h, &st) != 0) {
        return 0;
    }
    return S_ISREG(st.st_mode) || S_ISBLK(st.st_mode);
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
MaxlineError(Wait *w, int maxline)
{
    return Weft_Error(w->interp, "MAXLINE", "%s: line longer than %d bytes "
            "on \"%s\"", w->cmdName, maxline, ChanName(w->chan));
}

/* One try at a line; the channel is non-blocking for the try only. */
static int
TryGets(Wait *w)
{
    Tcl_Channel chan = w->chan;
    Tcl_Obj *line = Tcl_NewObj();
    int n, code;
    int maxline = w->cs->maxline;

    Tcl_IncrRefCount(line);
    n = Tcl_GetsObj(chan, line);
    if (n >= 0) {
        code = (maxline > 0 && n > maxline) ? MaxlineError(w, maxline)
                : GetsResult(w->interp, line, n, w->varName);
    } else if (Tcl_Eof(chan)) {
        code = GetsResult(w->interp, line, -1, w->varName);
    } else if (Tcl_InputBlocked(chan)) {
        code = (maxline > 0 && Tcl_InputBuffered(chan) > maxline)
                ? MaxlineError(w, maxline) : STEP_WAIT;
    } else {
        code = IoError(w->interp, "reading", chan);
    }
    Tcl_DecrRefCount(line);
    return code;
}

/*
 * Run a read step with the channel non-blocking.  A read queues no output,
 * so leaving cannot cut a background flush short unless one was pending.
 */
static int
ReadStep(Wait *w, int (*try)(Wait *w))
{
    int code;

    if (w->flags & W_SKIP) {
        w->flags &= ~W_SKIP;
        Weft_ChanArm(w);
        return STEP_WAIT;
    }
    if (Weft_ChanEnterNonBlocking(w) != TCL_OK) {
        return TCL_ERROR;
    }
    code = try(w);
    Weft_ChanLeaveNonBlocking(w, !w->cs->restorePending);
    if (code == STEP_WAIT) {
        Weft_ChanArm(w);
    }
    return code;
}

static int
StepGets(Wait *w)
{
    return ReadStep(w, TryGets);
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
BlockGets(Wait *w)
{
    return BlockingGets(w->interp, w->chan, w->varName);
}

/*
 * Non-blocking channel: a complete line (or EOF) already available gives
 * the same result in or outside a coroutine, so no need to ask which.
 * Returns STEP_WAIT when there is none.
 */
static int
FastGets(WeftInterp *wi, Tcl_Interp *interp, Tcl_Channel chan, ChanState *cs,
        Tcl_Obj *varName)
{
    int maxline = cs ? cs->maxline : WEFT_DEFAULT_MAXLINE;
    Tcl_Obj *line = Tcl_NewObj();
    Tcl_Obj *coro;
    int n, code = STEP_WAIT;

    Tcl_IncrRefCount(line);
    n = Tcl_GetsObj(chan, line);
    if ((n >= 0 && (maxline == 0 || n <= maxline)) || (n < 0
            && (Tcl_Eof(chan) || !Tcl_InputBlocked(chan)))) {
        code = (n < 0 && !Tcl_Eof(chan)) ? IoError(interp, "reading", chan)
                : GetsResult(interp, line, n, varName);
    } else if (n >= 0) {
        /* Over -maxline: an error in a coroutine, the line outside. */
        if ((coro = Weft_CurrentCoroutine(wi)) == NULL) {
            code = GetsResult(interp, line, n, varName);
        } else {
            Tcl_DecrRefCount(coro);
            code = Weft_Error(interp, "MAXLINE", "weft::gets: line longer "
                    "than %d bytes on \"%s\"", maxline, ChanName(chan));
        }
    }
    Tcl_DecrRefCount(line);
    return code;
}

static int
GetsNR(ClientData cd, Tcl_Interp *interp, int objc, Tcl_Obj *const objv[])
{
    WeftInterp *wi = (WeftInterp *) cd;
    Tcl_Obj *varName = objc == 3 ? objv[2] : NULL;
    Tcl_Channel chan;
    ChanState *cs;
    Tcl_Obj *coro;
    Wait *w;
    int blocking, code;

    if (objc < 2 || objc > 3) {
        Tcl_WrongNumArgs(interp, 1, objv, "channelId ?varName?");
        return TCL_ERROR;
    }
    if ((chan = GetChan(interp, objv[1], TCL_READABLE)) == NULL) {
        return TCL_ERROR;
    }
    cs = Weft_ChanFind(wi, chan);
    if (cs != NULL && cs->waiter[DIR_READ] != NULL) {
        return BusyError(interp, "weft::gets", chan, DIR_READ);
    }
    if (WasBlocking(interp, chan, &blocking) != TCL_OK) {
        return TCL_ERROR;
    }
    if (!blocking && (code = FastGets(wi, interp, chan, cs, varName))
            != STEP_WAIT) {
        return code;
    }
    if ((blocking && NeverBlocks(chan, TCL_READABLE))
            || (coro = Weft_CurrentCoroutine(wi)) == NULL) {
        return BlockingGets(interp, chan, varName);
    }
    cs = Weft_ChanGet(wi, chan);
    w = Weft_NewWait(wi, OP_GETS, coro, "weft::gets");
    Tcl_DecrRefCount(coro);
    Weft_ChanAttach(w, cs, DIR_READ);
    if (varName != NULL) {
        w->varName = varName;
        Tcl_IncrRefCount(w->varName);
    }
    w->step = StepGets;
    w->block = BlockGets;
    if (!blocking && !(cs->maxline > 0
            && Tcl_InputBuffered(chan) > cs->maxline)) {
        w->flags |= W_SKIP;     /* FastGets just found no complete line */
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
TryRead(Wait *w)
{
    Tcl_Channel chan = w->chan;
    int i;

    for (i = 0; i < 64; i++) {
        int toRead = -1;

        if (w->want >= 0) {
            toRead = w->want - Tcl_GetCharLength(w->acc);
            if (toRead <= 0) {
                break;
            }
        }
        if (Tcl_ReadChars(chan, w->acc, toRead, 1) < 0) {
            return IoError(w->interp, "reading", chan);
        }
        if (Tcl_Eof(chan)) {
            break;
        }
        if (w->want >= 0 && Tcl_GetCharLength(w->acc) >= w->want) {
            break;
        }
        if (Tcl_InputBlocked(chan)) {
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
StepRead(Wait *w)
{
    return ReadStep(w, TryRead);
}

/*
 * The read fails (timeout, deleted coroutine, I/O error): put what it took
 * back at the head of the channel's input, in the channel's encoding, so
 * the next read gets it.
 */
static void
GiveBack(Wait *w)
{
    Tcl_DString enc, bytes;
    Tcl_Encoding encoding;
    const char *s, *utf;
    int len, ulen;

    if (w->chan == NULL || w->acc == NULL || Tcl_GetCharLength(w->acc) == 0) {
        return;
    }
    Tcl_DStringInit(&enc);
    Tcl_DStringInit(&bytes);
    Tcl_GetChannelOption(NULL, w->chan, "-encoding", &enc);
    if (strcmp(Tcl_DStringValue(&enc), "binary") == 0) {
        s = (const char *) Tcl_GetByteArrayFromObj(w->acc, &len);
    } else {
        encoding = Tcl_GetEncoding(NULL, Tcl_DStringValue(&enc));
        utf = Tcl_GetStringFromObj(w->acc, &ulen);
        s = Tcl_UtfToExternalDString(encoding, utf, ulen, &bytes);
        len = Tcl_DStringLength(&bytes);
        Tcl_FreeEncoding(encoding);
    }
    Tcl_Ungets(w->chan, s, len, 0);
    Tcl_SetObjLength(w->acc, 0);
    Tcl_DStringFree(&bytes);
    Tcl_DStringFree(&enc);
}

static int
BlockingRead(Tcl_Interp *interp, Tcl_Channel chan, Tcl_Obj *acc, int want,
        int nonewline)
{
    int blocking, code = TCL_OK;

    if (EnterBlocking(interp, chan, &blocking) != TCL_OK) {
        return TCL_ERROR;
    }
    if (want >= 0) {
        want -= Tcl_GetCharLength(acc);
    }
    if (want != 0 && Tcl_ReadChars(chan, acc, want, 1) < 0) {
        code = IoError(interp, "reading", chan);
    } else {
        if (nonewline && Tcl_Eof(chan)) {
            StripNewline(acc);
        }
        Tcl_SetObjResult(interp, acc);
    }
    LeaveBlocking(chan, blocking);
    return code;
}

static int
BlockRead(Wait *w)
{
    return BlockingRead(w->interp, w->chan, w->acc, w->want, w->nonewline);
}

static int
ReadNR(ClientData cd, Tcl_Interp *interp, int objc, Tcl_Obj *const objv[])
{
    WeftInterp *wi = (WeftInterp *) cd;
    Tcl_Channel chan;
    ChanState *cs;
    Tcl_Obj *coro, *acc;
    Wait *w;
    int nonewline = 0, want = -1, i = 1, blocking, code;

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
    cs = Weft_ChanFind(wi, chan);
    if (cs != NULL && cs->waiter[DIR_READ] != NULL) {
        return BusyError(interp, "weft::read", chan, DIR_READ);
    }
    if (WasBlocking(interp, chan, &blocking) != TCL_OK) {
        return TCL_ERROR;
    }
    if ((blocking && NeverBlocks(chan, TCL_READABLE))
            || (coro = Weft_CurrentCoroutine(wi)) == NULL) {
        acc = Tcl_NewObj();
        Tcl_IncrRefCount(acc);
        code = BlockingRead(interp, chan, acc, want, nonewline);
        Tcl_DecrRefCount(acc);
        return code;
    }
    cs = Weft_ChanGet(wi, chan);
    w = Weft_NewWait(wi, OP_READ, coro, "weft::read");
    Tcl_DecrRefCount(coro);
    Weft_ChanAttach(w, cs, DIR_READ);
    w->want = want;
    w->nonewline = nonewline;
    w->acc = Tcl_NewObj();
    Tcl_IncrRefCount(w->acc);
    w->step = StepRead;
    w->block = BlockRead;
    w->abandon = GiveBack;
    return Weft_Run(w);
}

/* ------------------------------------------------------------ puts/flush */

/* Surface an error of a background flush, without flushing anything. */
static int
PendingWriteError(Wait *w)
{
    if (Tcl_WriteChars(w->chan, "", 0) < 0) {
        return IoError(w->interp, "writing", w->chan);
    }
    Tcl_ResetResult(w->interp);
    return TCL_OK;
}

/* Wait until the output queue is empty, then surface any write error. */
static int
StepDrain(Wait *w)
{
    /* Cheap when a background flush is already scheduled. */
    if (Tcl_Flush(w->chan) != TCL_OK) {
        return IoError(w->interp, "flushing", w->chan);
    }
    if (Tcl_OutputBuffered(w->chan) > 0) {
        Weft_ChanArm(w);
        return STEP_WAIT;
    }
    return PendingWriteError(w);
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

/*
 * A write to a channel that was blocking, made non-blocking: the first step
 * queues the data; Tcl then buffers or flushes it by the channel's
 * -buffering as a blocking write would, except that what the OS does not take
 * at once goes to a background flush.  The call waits for that flush only:
 * once the channel handler sees the channel writable (Tcl reports it only
 * after its flush), what is still buffered is what a blocking write would
 * have left there too.
 */
static int
StepWrite(Wait *w)
{
    if (!(w->flags & W_WROTE)) {
        w->flags |= W_WROTE;
        if (DoWrite(w->interp, w->chan, w->acc, !w->nonewline) != TCL_OK) {
            return TCL_ERROR;
        }
    }
    if ((w->flags & W_FIRED) || Tcl_OutputBuffered(w->chan) == 0) {
        return PendingWriteError(w);
    }
    Weft_ChanArm(w);
    return STEP_WAIT;
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

/* The coroutine cannot yield: finish the write as a blocking one would. */
static int
BlockWrite(Wait *w)
{
    if (!(w->flags & W_SETNB)) {
        return BlockingFlush(w->interp, w->chan);
    }
    /* Blocking again (Tcl keeps the queued output), then flush it. */
    w->flags &= ~W_SETNB;
    Weft_ChanLeaveNonBlocking(w, 1);
    if (Tcl_Flush(w->chan) != TCL_OK) {
        return IoError(w->interp, "flushing", w->chan);
    }
    Tcl_ResetResult(w->interp);
    return TCL_OK;
}

static Wait *
NewWriteWait(WeftInterp *wi, Tcl_Channel chan, Tcl_Obj *coro,
        const char *cmdName)
{
    Wait *w = Weft_NewWait(wi, OP_WRITE, coro, cmdName);

    Tcl_DecrRefCount(coro);
    Weft_ChanAttach(w, Weft_ChanGet(wi, chan), DIR_WRITE);
    w->block = BlockWrite;
    return w;
}

static int
WriteNR(WeftInterp *wi, Tcl_Interp *interp, Tcl_Channel chan, Tcl_Obj *str,
        int newline, const char *cmdName)
{
    ChanState *cs = Weft_ChanFind(wi, chan);
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
        w = NewWriteWait(wi, chan, coro, cmdName);
        w->step = StepDrain;
        return Weft_Run(w);
    }
    if (NeverBlocks(chan, TCL_WRITABLE)
            || (coro = Weft_CurrentCoroutine(wi)) == NULL) {
        if (DoWrite(interp, chan, str, newline) != TCL_OK) {
            return TCL_ERROR;
        }
        Tcl_ResetResult(interp);
        return TCL_OK;
    }
    /* Blocking channel in a coroutine: write non-blocking, then wait. */
    w = NewWriteWait(wi, chan, coro, cmdName);
    if (Weft_ChanEnterNonBlocking(w) != TCL_OK) {
        cs = w->cs;
        Weft_FreeWait(w);
        Weft_ChanMaybeFree(cs);
        return TCL_ERROR;
    }
    w->flags |= W_SETNB;
    if (str == NULL) {
        w->flags |= W_WROTE;
        w->step = StepDrain;
    } else {
        w->acc = str;
        Tcl_IncrRefCount(w->acc);
        w->nonewline = !newline;
        w->step = StepWrite;
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
    return STEP_WAIT;
}

static int
BlockSleep(Wait *w)
{
    Weft_SleepBlocking(Weft_SleepLeft(w));
    Tcl_ResetResult(w->interp);
    return TCL_OK;
}

/* Like `after ms`: a wide integer, negative sleeps 0. */
static int
SleepNR(ClientData cd, Tcl_Interp *interp, int objc, Tcl_Obj *const objv[])
{
    WeftInterp *wi = (WeftInterp *) cd;
    Tcl_WideInt ms;
    Tcl_Obj *coro;
    Wait *w;

    if (objc != 2) {
        Tcl_WrongNumArgs(interp, 1, objv, "ms");
        return TCL_ERROR;
    }
    if (Tcl_GetWideIntFromObj(interp, objv[1], &ms) != TCL_OK) {
        return TCL_ERROR;
    }
    if (ms < 0) {
        ms = 0;
    }
    if ((coro = Weft_CurrentCoroutine(wi)) == NULL) {
        Weft_SleepBlocking(ms);
        return TCL_OK;
    }
    w = Weft_NewWait(wi, OP_SLEEP, coro, "weft::sleep");
    Tcl_DecrRefCount(coro);
    w->step = StepSleep;
    w->block = BlockSleep;
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
