/*
 * weft_tcl.h -- internal declarations of the weft Tcl package.
 *
 * The package makes blocking-style channel I/O work inside Tcl coroutines:
 * a command that would block arms a channel handler (and optionally a timer)
 * in Tcl's notifier, then yields the current coroutine through ::yield using
 * the non-recursive engine.  The notifier wakes the coroutine by resuming it
 * by (current) name.  Nothing here runs Tcl on any other stack.
 */
#ifndef WEFT_TCL_H
#define WEFT_TCL_H

#include <tcl.h>

#ifndef WEFT_TCL_VERSION
#define WEFT_TCL_VERSION "0.1"
#endif

#define WEFT_DEFAULT_MAXLINE   65536
#define WEFT_DEFAULT_MAXOUTPUT 65536

typedef struct WeftInterp WeftInterp;
typedef struct ChanState ChanState;
typedef struct Wait Wait;
typedef struct CoroRec CoroRec;

/* Per-interpreter package state (interp assoc data "weft"). */
struct WeftInterp {
    Tcl_Interp *interp;
    Tcl_HashTable chans;        /* Tcl_Channel -> ChanState* */
    Tcl_Obj *yieldCmd;          /* the list {::yield} */
    Tcl_ObjCmdProc *infoCoroProc;
    ClientData infoCoroData;
    Tcl_Obj *infoCoroWord;
    Tcl_HashTable coros;        /* Tcl_Command -> CoroRec* */
    long liveWaits;             /* Wait records alive (leak check) */
    long armed;                 /* wake-up sources armed for a waiter */
    long handlers;              /* channel handlers registered */
    Tcl_TimerToken sweep;       /* checks for channels closed by `close` */
    int deleted;
};

enum { DIR_READ = 0, DIR_WRITE = 1 };

/*
 * Per-channel options and waiters, created on first use.  The state holds a
 * reference on the channel (Tcl_RegisterChannel(NULL, ...)) so the pointer
 * stays valid: Tcl 8.6 closes a channel that still has output queued in the
 * background *without* calling its close handlers.  When the interpreter
 * closes the channel, it only drops its own reference; a periodic sweep sees
 * the channel is no longer registered, wakes the waiters (WEFT CLOSED) and
 * releases ours, which lets Tcl finish the close.
 */
struct ChanState {
    WeftInterp *wi;
    Tcl_Channel chan;
    Tcl_HashEntry *entry;
    int timeout;                /* ms, 0 = wait forever */
    int maxline;                /* bytes, 0 = unlimited */
    int maxoutput;              /* bytes buffered before puts waits */
    Wait *waiter[2];            /* at most one per direction */
    int handler[2];             /* channel handler registered (lazy) */
    int nbUsers;                /* calls that need it non-blocking now */
    int wasBlocking;            /* mode to restore when nbUsers drops to 0 */
    int restorePending;         /* restore -blocking 1 once output drained */
};

enum WaitOp { OP_GETS, OP_READ, OP_WRITE, OP_SLEEP };

/* Flags of a Wait. */
#define W_TIMEDOUT  0x01        /* the -timeout timer fired */
#define W_CLOSED    0x02        /* the channel was closed under us */
#define W_DELETED   0x04        /* the coroutine command was deleted */
#define W_SLEPT     0x08        /* weft::sleep timer fired */
#define W_IDLE      0x20        /* an idle wake-up is scheduled */
#define W_SETNB     0x40        /* counted in cs->nbUsers */

/* One suspended (or about to suspend) command call inside a coroutine. */
struct Wait {
    WeftInterp *wi;
    Tcl_Interp *interp;
    enum WaitOp op;
    int flags;
    ChanState *cs;
    Tcl_Channel chan;
    int dir;
    int wantMask;               /* events the step wants to wait for */
    int waiting;                /* registered as cs->waiter[dir] */
    Tcl_TimerToken timer;       /* timeout (or sleep) timer */
    CoroRec *rec;               /* the coroutine waiting */
    Tcl_Obj *varName;           /* gets: ?varName? */
    Tcl_Obj *acc;               /* read: accumulated data */
    int want;                   /* read: chars wanted, -1 = to EOF */
    int nonewline;              /* read -nonewline */
    int drained;                /* write: wait for empty output buffer */
    int timerStarted;
    int skipStep;               /* the caller just tried: wait first */
    int (*step)(Wait *w);       /* try to complete; see STEP_WAIT */
    const char *cmdName;
};

/* A step returns TCL_OK or TCL_ERROR when done (result in the interp), or
 * STEP_WAIT to wait for w->wantMask on the channel or for the timer. */
#define STEP_WAIT 100

/*
 * A coroutine that has used a weft command: one command trace (delete and
 * rename) for its lifetime, and its current name for wake-ups.
 */
struct CoroRec {
    WeftInterp *wi;
    Tcl_Command token;
    Tcl_HashEntry *entry;
    Tcl_Obj *name;              /* NULL after a rename: recomputed */
    Wait *wait;                 /* the call it is suspended in, if any */
};

/* weft_chan.c */
ChanState *Weft_ChanState(WeftInterp *wi, Tcl_Channel chan, int create);
void Weft_FreeAllChanStates(WeftInterp *wi);
void Weft_ForgetChannel(WeftInterp *wi, Tcl_Channel chan);
void Weft_EnsureHandler(ChanState *cs, int dir);
void Weft_DropHandler(ChanState *cs, int dir, int tclDropped);
void Weft_RestoreBlocking(ChanState *cs);
int  Weft_SetNonBlocking(Wait *w);
int  Weft_SetNonBlockingKnown(Wait *w, int blocking);

/* weft_wait.c */
void Weft_FreeAllCoroRecs(WeftInterp *wi);
void Weft_Disarm(Wait *w);
void Weft_Wake(Wait *w);
void Weft_WakeLater(Wait *w);
void Weft_StartSleep(Wait *w, int ms);

Tcl_Obj *Weft_CurrentCoroutine(WeftInterp *wi);
Wait *Weft_NewWait(WeftInterp *wi, enum WaitOp op, ChanState *cs,
        Tcl_Obj *coroName, const char *cmdName);
int  Weft_Run(Wait *w);

void Weft_FreeWait(Wait *w);
int  Weft_Error(Tcl_Interp *interp, const char *code, const char *fmt, ...);

/* weft_io.c */
int  Weft_RegisterIoCommands(Tcl_Interp *interp, WeftInterp *wi);

/* weft_serve.c */
int  Weft_RegisterServeCommands(Tcl_Interp *interp, WeftInterp *wi);

/* notifier_epoll.c */
int  Weft_NotifierCmd(ClientData cd, Tcl_Interp *interp, int objc,
        Tcl_Obj *const objv[]);
int  Weft_InstallEpoll(Tcl_Interp *interp);
const char *Weft_NotifierName(void);

#endif
