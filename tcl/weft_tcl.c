/*
 * weft_tcl.c -- package entry point (Weft_Init), weft::configure and
 * weft::stats.
 */
#include "weft_tcl.h"

#include <stdlib.h>
#include <string.h>

static const char initScript[] =
    "namespace eval ::weft {\n"
    "    namespace eval clients {}\n"
    "    namespace export gets read puts flush sleep configure serve\n"
    "    proc _conn {handler sock quiet} {\n"
    "        set code [catch {{*}$handler $sock} res opts]\n"
    "        if {!$quiet} { catch {::puts stderr \"EOF on $sock\"} }\n"
    "        catch {::weft::_drop $sock}\n"
    "        catch {::close $sock}\n"
    "        if {$code == 1} { return -options $opts $res }\n"
    "        return\n"
    "    }\n"
    "}\n";

static void
FreeWeftInterp(char *p)
{
    ckfree(p);
}

static void
DeleteWeftInterp(ClientData cd, Tcl_Interp *interp)
{
    WeftInterp *wi = (WeftInterp *) cd;

    (void) interp;
    wi->deleted = 1;
    Weft_FreeAllCoroRecs(wi);
    Weft_FreeAllChanStates(wi);
    Tcl_DeleteHashTable(&wi->coros);
    Tcl_DeleteHashTable(&wi->chans);
    Tcl_DecrRefCount(wi->yieldCmd);
    Tcl_DecrRefCount(wi->infoCoroWord);
    Tcl_EventuallyFree(wi, FreeWeftInterp);
}

/* --------------------------------------------------------- weft::configure */

static const char *const optNames[] = {"-maxline", "-maxoutput", "-timeout",
    NULL};

static int *
OptSlot(ChanState *cs, int idx)
{
    switch (idx) {
    case 0: return &cs->maxline;
    case 1: return &cs->maxoutput;
    default: return &cs->timeout;
    }
}

static int
ConfigureCmd(ClientData cd, Tcl_Interp *interp, int objc,
        Tcl_Obj *const objv[])
{
    WeftInterp *wi = (WeftInterp *) cd;
    Tcl_Channel chan;
    ChanState *cs, defaults;
    int i, idx, v;

    if (objc < 2) {
        Tcl_WrongNumArgs(interp, 1, objv, "channelId ?-option? ?value "
                "-option value ...?");
        return TCL_ERROR;
    }
    chan = Tcl_GetChannel(interp, Tcl_GetString(objv[1]), NULL);
    if (chan == NULL) {
        return TCL_ERROR;
    }
    if (objc <= 3) {
        /* A query: the defaults unless something was set. */
        ChanState *found = Weft_ChanFind(wi, chan);
        memset(&defaults, 0, sizeof defaults);
        defaults.maxline = WEFT_DEFAULT_MAXLINE;
        defaults.maxoutput = WEFT_DEFAULT_MAXOUTPUT;
        cs = found ? found : &defaults;
    }
    if (objc == 2) {
        Tcl_Obj *res = Tcl_NewObj();
        for (i = 0; optNames[i]; i++) {
            Tcl_ListObjAppendElement(NULL, res,
                    Tcl_NewStringObj(optNames[i], -1));
            Tcl_ListObjAppendElement(NULL, res, Tcl_NewIntObj(*OptSlot(cs, i)));
        }
        Tcl_SetObjResult(interp, res);
        return TCL_OK;
    }
    if (objc == 3) {
        if (Tcl_GetIndexFromObj(interp, objv[2], optNames, "option", 0, &idx)
                != TCL_OK) {
            return TCL_ERROR;
        }
        Tcl_SetObjResult(interp, Tcl_NewIntObj(*OptSlot(cs, idx)));
        return TCL_OK;
    }
    if (objc % 2 != 0) {
        Tcl_SetObjResult(interp, Tcl_ObjPrintf("value for \"%s\" missing",
                Tcl_GetString(objv[objc - 1])));
        Tcl_SetErrorCode(interp, "TCL", "ARGUMENT", "MISSING", (char *) NULL);
        return TCL_ERROR;
    }
    /* Validate everything first, then apply. */
    for (i = 2; i < objc; i += 2) {
        if (Tcl_GetIndexFromObj(interp, objv[i], optNames, "option", 0, &idx)
                != TCL_OK || Tcl_GetIntFromObj(interp, objv[i + 1], &v)
                != TCL_OK) {
            return TCL_ERROR;
        }
        if (v < 0) {
            Tcl_SetObjResult(interp, Tcl_ObjPrintf("%s must be a non-negative"
                    " integer, got \"%s\"", optNames[idx],
                    Tcl_GetString(objv[i + 1])));
            Tcl_SetErrorCode(interp, "TCL", "VALUE", "NUMBER", (char *) NULL);
            return TCL_ERROR;
        }
    }
    cs = Weft_ChanGet(wi, chan);
    Weft_ChanConfigured(cs);
    for (i = 2; i < objc; i += 2) {
        Tcl_GetIndexFromObj(NULL, objv[i], optNames, "option", 0, &idx);
        Tcl_GetIntFromObj(NULL, objv[i + 1], &v);
        *OptSlot(cs, idx) = v;
    }
    Tcl_ResetResult(interp);
    return TCL_OK;
}

/* ------------------------------------------------------------- weft::_drop */

/* Used by ::weft::_conn before it closes a client's socket. */
static int
DropCmd(ClientData cd, Tcl_Interp *interp, int objc, Tcl_Obj *const objv[])
{
    Tcl_Channel chan;

    if (objc != 2) {
        Tcl_WrongNumArgs(interp, 1, objv, "channelId");
        return TCL_ERROR;
    }
    chan = Tcl_GetChannel(interp, Tcl_GetString(objv[1]), NULL);
    if (chan == NULL) {
        return TCL_ERROR;
    }
    Weft_ChanForget((WeftInterp *) cd, chan);
    return TCL_OK;
}

/* ------------------------------------------------------------- weft::stats */

static int
StatsCmd(ClientData cd, Tcl_Interp *interp, int objc, Tcl_Obj *const objv[])
{
    WeftInterp *wi = (WeftInterp *) cd;
    Tcl_Obj *res;

    if (objc != 1) {
        Tcl_WrongNumArgs(interp, 1, objv, NULL);
        return TCL_ERROR;
    }
    res = Tcl_NewObj();
    Tcl_ListObjAppendElement(NULL, res, Tcl_NewStringObj("waits", -1));
    Tcl_ListObjAppendElement(NULL, res, Tcl_NewLongObj(wi->liveWaits));
    Tcl_ListObjAppendElement(NULL, res, Tcl_NewStringObj("armed", -1));
    Tcl_ListObjAppendElement(NULL, res, Tcl_NewLongObj(wi->armed));
    Tcl_ListObjAppendElement(NULL, res, Tcl_NewStringObj("handlers", -1));
    Tcl_ListObjAppendElement(NULL, res, Tcl_NewLongObj(wi->handlers));
    Tcl_ListObjAppendElement(NULL, res, Tcl_NewStringObj("coroutines", -1));
    Tcl_ListObjAppendElement(NULL, res, Tcl_NewIntObj(wi->coros.numEntries));
    Tcl_ListObjAppendElement(NULL, res, Tcl_NewStringObj("channels", -1));
    Tcl_ListObjAppendElement(NULL, res, Tcl_NewIntObj(wi->chans.numEntries));
    Tcl_ListObjAppendElement(NULL, res, Tcl_NewStringObj("sweep", -1));
    Tcl_ListObjAppendElement(NULL, res, Tcl_NewIntObj(wi->sweep != NULL));
    Tcl_ListObjAppendElement(NULL, res, Tcl_NewStringObj("notifier", -1));
    Tcl_ListObjAppendElement(NULL, res,
            Tcl_NewStringObj(Weft_NotifierName(), -1));
    Tcl_SetObjResult(interp, res);
    return TCL_OK;
}

/* -------------------------------------------------------------- Weft_Init */

int Weft_Init(Tcl_Interp *interp);

int
Weft_Init(Tcl_Interp *interp)
{
    WeftInterp *wi;
    Tcl_CmdInfo info;
    Tcl_Obj *y;
    const char *env;

    if (Tcl_InitStubs(interp, "8.6", 0) == NULL) {
        return TCL_ERROR;
    }
    if (Tcl_GetAssocData(interp, "weft", NULL) != NULL) {
        return Tcl_PkgProvide(interp, "weft", WEFT_TCL_VERSION);
    }
    if (Tcl_EvalEx(interp, initScript, -1, TCL_EVAL_GLOBAL) != TCL_OK) {
        return TCL_ERROR;
    }
    wi = (WeftInterp *) ckalloc(sizeof(WeftInterp));
    memset(wi, 0, sizeof *wi);
    wi->interp = interp;
    wi->thread = Tcl_GetCurrentThread();
    Tcl_InitHashTable(&wi->chans, TCL_ONE_WORD_KEYS);
    Tcl_InitHashTable(&wi->coros, TCL_ONE_WORD_KEYS);
    y = Tcl_NewStringObj("::yield", -1);
    wi->yieldCmd = Tcl_NewListObj(1, &y);
    Tcl_IncrRefCount(wi->yieldCmd);
    wi->infoCoroWord = Tcl_NewStringObj("coroutine", -1);
    Tcl_IncrRefCount(wi->infoCoroWord);
    if (Tcl_GetCommandInfo(interp, "::tcl::info::coroutine", &info)
            && info.isNativeObjectProc && info.objProc != NULL) {
        wi->infoCoroProc = info.objProc;
        wi->infoCoroData = info.objClientData;
    }
    Tcl_SetAssocData(interp, "weft", DeleteWeftInterp, wi);

    if (Weft_RegisterIoCommands(interp, wi) != TCL_OK
            || Weft_RegisterServeCommands(interp, wi) != TCL_OK) {
        return TCL_ERROR;
    }
    Tcl_CreateObjCommand(interp, "::weft::configure", ConfigureCmd, wi, NULL);
    Tcl_CreateObjCommand(interp, "::weft::stats", StatsCmd, wi, NULL);
    Tcl_CreateObjCommand(interp, "::weft::_drop", DropCmd, wi, NULL);
    Tcl_CreateObjCommand(interp, "::weft::notifier", Weft_NotifierCmd, wi,
            NULL);

    env = getenv("WEFT_NOTIFIER");
    if (env != NULL && strcmp(env, "epoll") == 0
            && Weft_InstallEpoll(interp) != TCL_OK) {
        return TCL_ERROR;
    }
    return Tcl_PkgProvide(interp, "weft", WEFT_TCL_VERSION);
}
