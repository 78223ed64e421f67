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
    Tcl_ThreadId thread;        /* the interpreter's thread */
    Tcl_HashTable chans;        /* Tcl_Channel -> ChanState* */
    Tcl_Obj *yieldCmd;          /* the list {::yield} */
    Tcl_ObjCmdProc *infoCoroProc;
    ClientData infoCoroData;
    Tcl_Obj *infoCoroWord;
    Tcl_HashTable coros;        /* Tcl_Command -> CoroRec* */
    long liveWaits;             /* Wait records alive (leak check) */
    long armed;                 /* wake-up sources armed for a waiter */
    long handlers;              /* channel handlers registered */
    Tcl_TimerToken sweep;       /* notices channels that left the interp */
    int deleted;
};

enum { DIR_READ = 0, DIR_WRITE = 1 };

/*
 * Per-channel state (weft_chan.c).  It exists only while it holds something:
 * options set by weft::configure, a waiter, a call that made the channel
 * non-blocking, or a blocking mode still to restore.  weft holds a reference
 * on the channel (Tcl_RegisterChannel(NULL, ...)) only while a coroutine
 * waits on it or a restore is pending ("held"), so a `close` between calls
 * is Tcl's own close, done at once with its errors.
 */
struct ChanState {
    WeftInterp *wi;
    Tcl_Channel chan;
    Tcl_HashEntry *entry;
    char *name;                 /* configured: the channel's name (else NULL) */
    int configured;             /* weft::configure set an option */
    int timeout;                /* ms, 0 = wait forever */
    int maxline;                /* bytes, 0 = unlimited */
    int maxoutput;              /* bytes buffered before puts waits */
    Wait *waiter[2];            /* at most one per direction */
    int handler[2];             /* channel handler registered */
    int held;                   /* our reference on the channel is held */
    int nbUsers;                /* calls that need it non-blocking now */
    int wasBlocking;            /* mode to restore when nbUsers drops to 0 */
    int restorePending;         /* restore -blocking 1 once Tcl's flush ends */
};

enum WaitOp { OP_GETS, OP_READ, OP_WRITE, OP_SLEEP };

/* Flags of a Wait. */
#define W_TIMEDOUT  0x01        /* the -timeout timer fired */
#define W_CLOSED    0x02        /* the channel was closed under us */
#define W_DELETED   0x04        /* the coroutine command was deleted */
#define W_SLEPT     0x08        /* weft::sleep timer fired */
#define W_FIRED     0x10        /* the channel handler woke it */
#define W_IDLE      0x20        /* an idle wake-up is scheduled */
#define W_SETNB     0x40        /* counted in cs->nbUsers for its lifetime */
#define W_SKIP      0x80        /* the caller just tried: arm at once */
#define W_WROTE     0x100       /* write: the data is queued */

/*
 * One suspended (or about to suspend) command call inside a coroutine.
 * weft_wait.c drives it and knows nothing of channels: the layers above
 * plug in through the callbacks below (weft_io.c sets step, block and
 * abandon; weft_chan.c sets unhook and release for channel waits).
 */
struct Wait {
    WeftInterp *wi;
    Tcl_Interp *interp;
    enum WaitOp op;
    int flags;
    int timeout;                /* ms the call may wait in all, 0 = forever */
    Tcl_TimerToken timer;       /* timeout (or sleep) timer */
    Tcl_Time deadline;          /* sleep: when it ends */
    CoroRec *rec;               /* the coroutine waiting */
    const char *cmdName;

    /* Try to complete: TCL_OK/TCL_ERROR (result in the interp) or
     * STEP_WAIT after arming a wake-up (weft_chan.c) or a timer. */
    int (*step)(Wait *w);
    /* Complete without yielding (the coroutine cannot yield): do what the
     * command does outside a coroutine.  NULL: raise WEFT NOCORO. */
    int (*block)(Wait *w);
    /* The call fails or its coroutine is deleted: give back what it took. */
    void (*abandon)(Wait *w);
    /* Stop the channel from waking this wait (weft_chan.c). */
    void (*unhook)(Wait *w);
    /* The call is over, whatever its result (weft_chan.c). */
    void (*release)(Wait *w, int code);

    /* Channel waits (weft_chan.c, weft_io.c). */
    ChanState *cs;
    Tcl_Channel chan;
    int dir;
    int waiting;                /* registered as cs->waiter[dir] */
    Tcl_Obj *varName;           /* gets: ?varName? */
    Tcl_Obj *acc;               /* read: accumulated data */
    int want;                   /* read: chars wanted, -1 = to EOF */
    int nonewline;              /* read -nonewline */
};

/* A step returns TCL_OK or TCL_ERROR when done (result in the interp), or
 * STEP_WAIT to wait for an armed wake-up. */
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

/*
 * Who calls whom: weft_tcl.c and weft_serve.c register the commands;
 * weft_io.c (commands) calls weft_chan.c (channel state) and weft_wait.c
 * (suspension); weft_chan.c calls weft_wait.c; weft_wait.c calls up only
 * through the Wait callbacks above.
 */

/* weft_wait.c: suspending and resuming coroutines */
Tcl_Obj *Weft_CurrentCoroutine(WeftInterp *wi);
Wait *Weft_NewWait(WeftInterp *wi, enum WaitOp op, Tcl_Obj *coroName,
        const char *cmdName);
int  Weft_Run(Wait *w);
void Weft_Disarm(Wait *w);
void Weft_FreeWait(Wait *w);
void Weft_Wake(Wait *w);
void Weft_WakeLater(Wait *w);
void Weft_StartSleep(Wait *w, Tcl_WideInt ms);
void Weft_SleepBlocking(Tcl_WideInt ms);
Tcl_WideInt Weft_SleepLeft(Wait *w);
void Weft_FreeAllCoroRecs(WeftInterp *wi);
int  Weft_Error(Tcl_Interp *interp, const char *code, const char *fmt, ...);

/* weft_chan.c: per-channel state, handlers, blocking mode */
ChanState *Weft_ChanFind(WeftInterp *wi, Tcl_Channel chan);
ChanState *Weft_ChanGet(WeftInterp *wi, Tcl_Channel chan);
void Weft_ChanMaybeFree(ChanState *cs);
void Weft_ChanConfigured(ChanState *cs);
void Weft_ChanForget(WeftInterp *wi, Tcl_Channel chan);
void Weft_ChanAttach(Wait *w, ChanState *cs, int dir);
void Weft_ChanArm(Wait *w);
int  Weft_ChanEnterNonBlocking(Wait *w);
void Weft_ChanLeaveNonBlocking(Wait *w, int flushIdle);
void Weft_FreeAllChanStates(WeftInterp *wi);

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
