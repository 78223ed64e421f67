/*
 * notifier_epoll.c -- an epoll(7) notifier for Tcl 8.6, installed through
 * Tcl_SetNotifier, so an interpreter can watch more than FD_SETSIZE (1024)
 * file descriptors.
 *
 * It mirrors the semantics of Tcl's Unix notifier: file handlers are kept
 * per thread, readiness found by Tcl_WaitForEvent is turned into queued
 * Tcl events that call the handler from Tcl_ServiceEvent.  Tcl_AlertNotifier
 * (from other threads) writes to an eventfd.  Regular files, which epoll
 * refuses, are treated as always ready, as select() does.
 */
#include "weft_tcl.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define MAX_EVENTS 1024

typedef struct FileHandler {
    Tcl_FileProc *proc;
    ClientData cd;
    int mask;
    int readyMask;
    int active;
    int always;                 /* epoll refused it (regular file) */
} FileHandler;

typedef struct EpollTsd {
    int initialized;
    int epfd;
    int evfd;
    FileHandler *fh;            /* indexed by fd */
    int nfh;
    int nalways;
    struct epoll_event *events;
    struct EpollTsd *next;      /* registry, for alerts */
} EpollTsd;

typedef struct FileEvent {
    Tcl_Event header;
    int fd;
} FileEvent;

static Tcl_ThreadDataKey tsdKey;
TCL_DECLARE_MUTEX(registryMutex)
static EpollTsd *registry;
static int installed;

static EpollTsd *
GetTsd(void)
{
    EpollTsd *t = (EpollTsd *) Tcl_GetThreadData(&tsdKey, sizeof(EpollTsd));
    struct epoll_event ev;

    if (t->initialized) {
        return t;
    }
    t->epfd = epoll_create1(EPOLL_CLOEXEC);
    t->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (t->epfd < 0 || t->evfd < 0) {
        Tcl_Panic("weft: cannot create epoll notifier: %s", strerror(errno));
    }
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.fd = t->evfd;
    epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->evfd, &ev);
    t->events = (struct epoll_event *) ckalloc(sizeof(struct epoll_event)
            * MAX_EVENTS);
    t->initialized = 1;
    Tcl_MutexLock(&registryMutex);
    t->next = registry;
    registry = t;
    Tcl_MutexUnlock(&registryMutex);
    return t;
}

static uint32_t
EpollEvents(int mask)
{
    uint32_t e = 0;

    if (mask & TCL_READABLE) {
        e |= EPOLLIN;
    }
    if (mask & TCL_WRITABLE) {
        e |= EPOLLOUT;
    }
    if (mask & TCL_EXCEPTION) {
        e |= EPOLLPRI;
    }
    return e;
}

static void
EpCreateFileHandler(int fd, int mask, Tcl_FileProc *proc, ClientData cd)
{
    EpollTsd *t = GetTsd();
    FileHandler *h;
    struct epoll_event ev;

    if (fd < 0) {
        return;
    }
    if (fd >= t->nfh) {
        int n = t->nfh ? t->nfh : 256;
        while (n <= fd) {
            n *= 2;
        }
        t->fh = (FileHandler *) ckrealloc((char *) t->fh,
                sizeof(FileHandler) * n);
        memset(t->fh + t->nfh, 0, sizeof(FileHandler) * (n - t->nfh));
        t->nfh = n;
    }
    h = &t->fh[fd];
    memset(&ev, 0, sizeof ev);
    ev.events = EpollEvents(mask);
    ev.data.fd = fd;
    if (!h->active) {
        h->readyMask = 0;
        h->always = 0;
        if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            if (errno == EEXIST) {
                epoll_ctl(t->epfd, EPOLL_CTL_MOD, fd, &ev);
            } else if (errno == EPERM) {
                h->always = 1;
                t->nalways++;
            }
        }
    } else if (h->mask != mask && !h->always) {
        if (epoll_ctl(t->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 && errno == ENOENT) {
            epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev);
        }
    }
    h->active = 1;
    h->proc = proc;
    h->cd = cd;
    h->mask = mask;
}

static void
EpDeleteFileHandler(int fd)
{
    EpollTsd *t = GetTsd();
    FileHandler *h;

    if (fd < 0 || fd >= t->nfh || !t->fh[fd].active) {
        return;
    }
    h = &t->fh[fd];
    if (h->always) {
        t->nalways--;
    } else {
        epoll_ctl(t->epfd, EPOLL_CTL_DEL, fd, NULL);
    }
    memset(h, 0, sizeof *h);
}

static int
FileEventProc(Tcl_Event *evPtr, int flags)
{
    FileEvent *fe = (FileEvent *) evPtr;
    EpollTsd *t;
    FileHandler *h;
    Tcl_FileProc *proc;
    ClientData cd;
    int mask;

    if (!(flags & TCL_FILE_EVENTS)) {
        return 0;
    }
    t = GetTsd();
    if (fe->fd >= t->nfh || !t->fh[fe->fd].active) {
        return 1;
    }
    h = &t->fh[fe->fd];
    mask = h->readyMask & h->mask;
    h->readyMask = 0;
    if (mask) {
        proc = h->proc;         /* the table may move under the call */
        cd = h->cd;
        proc(cd, mask);
    }
    return 1;
}

static void
MarkReady(int fd, FileHandler *h, int mask)
{
    mask &= h->mask;
    if (mask == 0) {
        return;
    }
    if (h->readyMask == 0) {
        FileEvent *fe = (FileEvent *) ckalloc(sizeof(FileEvent));
        fe->header.proc = FileEventProc;
        fe->fd = fd;
        Tcl_QueueEvent((Tcl_Event *) fe, TCL_QUEUE_TAIL);
    }
    h->readyMask = mask;
}

static int
EpWaitForEvent(const Tcl_Time *timePtr)
{
    EpollTsd *t = GetTsd();
    int timeout = -1, n, i, found = 0;

    if (timePtr != NULL) {
        long long ms = (long long) timePtr->sec * 1000
                + (timePtr->usec + 999) / 1000;
        timeout = ms > 0x7fffffff ? 0x7fffffff : (int) ms;
    }
    if (t->nalways > 0) {
        timeout = 0;
    }
    n = epoll_wait(t->epfd, t->events, MAX_EVENTS, timeout);
    if (n < 0) {
        return 0;               /* EINTR: let the caller loop */
    }
    for (i = 0; i < n; i++) {
        uint32_t e = t->events[i].events;
        int fd = t->events[i].data.fd, mask = 0;

        if (fd == t->evfd) {
            uint64_t junk;
            while (read(t->evfd, &junk, sizeof junk) > 0) {
            }
            found = 1;
            continue;
        }
        if (fd < 0 || fd >= t->nfh || !t->fh[fd].active) {
            continue;
        }
        if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
            mask |= TCL_READABLE;
        }
        if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
            mask |= TCL_WRITABLE;
        }
        if (e & EPOLLPRI) {
            mask |= TCL_EXCEPTION;
        }
        MarkReady(fd, &t->fh[fd], mask);
        found = 1;
    }
    if (t->nalways > 0) {
        for (i = 0; i < t->nfh; i++) {
            if (t->fh[i].active && t->fh[i].always) {
                MarkReady(i, &t->fh[i], TCL_READABLE | TCL_WRITABLE);
                found = 1;
            }
        }
    }
    return found;
}

static void
EpSetTimer(const Tcl_Time *timePtr)
{
    (void) timePtr;             /* the timeout is passed to WaitForEvent */
}

static ClientData
EpInitNotifier(void)
{
    return GetTsd();
}

static void
EpFinalizeNotifier(ClientData cd)
{
    EpollTsd *t = (EpollTsd *) Tcl_GetThreadData(&tsdKey, sizeof(EpollTsd));
    EpollTsd **pp;

    (void) cd;
    if (!t->initialized) {
        return;
    }
    Tcl_MutexLock(&registryMutex);
    for (pp = &registry; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    }
    Tcl_MutexUnlock(&registryMutex);
    close(t->epfd);
    close(t->evfd);
    ckfree((char *) t->fh);
    ckfree((char *) t->events);
    memset(t, 0, sizeof *t);
}

/*
 * Wake a thread's WaitForEvent.  Threads that initialized their notifier
 * before the switch pass the select notifier's token, which we cannot map;
 * then every epoll thread is woken (spurious wake-ups are harmless).
 */
static void
EpAlertNotifier(ClientData cd)
{
    EpollTsd *t;
    uint64_t one = 1;
    int known = 0;
    ssize_t r;

    Tcl_MutexLock(&registryMutex);
    for (t = registry; t; t = t->next) {
        if (t == cd) {
            known = 1;
        }
    }
    for (t = registry; t; t = t->next) {
        if (!known || t == cd) {
            r = write(t->evfd, &one, sizeof one);
            (void) r;
        }
    }
    Tcl_MutexUnlock(&registryMutex);
}

static void
EpServiceModeHook(int mode)
{
    (void) mode;
}

static void
Nop(ClientData cd, int mask)
{
    (void) cd;
    (void) mask;
}

/*
 * Every interpreter of this thread that the switch can reach: interp and its
 * child interpreters, recursively (appended to *list).
 */
static void
CollectInterps(Tcl_Interp *interp, Tcl_Interp ***list, int *n, int *cap)
{
    Tcl_Obj *names, **elems;
    int count, i;

    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 8;
        *list = (Tcl_Interp **) ckrealloc((char *) *list,
                sizeof(Tcl_Interp *) * *cap);
    }
    (*list)[(*n)++] = interp;
    if (Tcl_EvalEx(interp, "::interp slaves", -1, TCL_EVAL_GLOBAL) != TCL_OK) {
        Tcl_ResetResult(interp);
        return;
    }
    names = Tcl_GetObjResult(interp);
    Tcl_IncrRefCount(names);
    Tcl_ResetResult(interp);
    if (Tcl_ListObjGetElements(NULL, names, &count, &elems) == TCL_OK) {
        for (i = 0; i < count; i++) {
            Tcl_Interp *child = Tcl_GetSlave(interp, Tcl_GetString(elems[i]));
            if (child != NULL) {
                CollectInterps(child, list, n, cap);
            }
        }
    }
    Tcl_DecrRefCount(names);
}

/* The channels registered in one interpreter (a new reference). */
static Tcl_Obj *
ChannelNames(Tcl_Interp *interp)
{
    Tcl_Obj *list;

    if (Tcl_GetChannelNamesEx(interp, NULL) != TCL_OK) {
        Tcl_ResetResult(interp);
        return Tcl_NewObj();
    }
    list = Tcl_GetObjResult(interp);
    Tcl_IncrRefCount(list);
    Tcl_ResetResult(interp);
    return list;
}

/* A listening TCP socket: it registers its file handler directly. */
static int
IsListening(Tcl_Channel chan)
{
    const Tcl_ChannelType *type = chan ? Tcl_GetChannelType(chan) : NULL;
    Tcl_DString ds;
    int listening;

    if (type == NULL || strcmp(type->typeName, "tcp") != 0) {
        return 0;
    }
    Tcl_DStringInit(&ds);
    listening = Tcl_GetChannelOption(NULL, chan, "-peername", &ds) != TCL_OK;
    Tcl_DStringFree(&ds);
    return listening;
}

/*
 * Threads in this process other than the caller and Tcl's notifier thread
 * (started here if it was not, so that it is always counted).  A thread
 * blocked in the select notifier would never see an alert of ours.
 */
static int
OtherThreads(void)
{
    DIR *d;
    struct dirent *e;
    int n = 0;

    Tcl_ServiceModeHook(TCL_SERVICE_ALL);
    if ((d = opendir("/proc/self/task")) == NULL) {
        return 0;
    }
    while ((e = readdir(d)) != NULL) {
        n += e->d_name[0] != '.';
    }
    closedir(d);
    return n > 2 ? n - 2 : 0;
}

/* Refuse (an error in interp) a switch that would cut off event sources. */
static int
Refuse(Tcl_Interp *interp, Tcl_Interp **interps, int n)
{
    int i, j, count, threads;
    Tcl_Obj **elems;

    if (Tcl_GetMaster(interp) != NULL) {
        return Weft_Error(interp, "NOTIFIER", "weft::notifier: switch from "
                "the main interpreter, not from a child interpreter: the "
                "notifier serves every interpreter of the process");
    }
    if ((threads = OtherThreads()) > 0) {
        return Weft_Error(interp, "NOTIFIER", "weft::notifier: cannot "
                "switch to epoll while other threads exist (%d); switch "
                "before creating threads", threads);
    }
    for (i = 0; i < n; i++) {
        Tcl_Obj *names = ChannelNames(interps[i]);

        Tcl_ListObjGetElements(NULL, names, &count, &elems);
        for (j = 0; j < count; j++) {
            const char *name = Tcl_GetString(elems[j]);

            if (IsListening(Tcl_GetChannel(interps[i], name, NULL))) {
                Weft_Error(interp, "NOTIFIER", "weft::notifier: cannot "
                        "switch to epoll while listening socket \"%s\" is "
                        "open; switch before opening server sockets", name);
                Tcl_DecrRefCount(names);
                return TCL_ERROR;
            }
        }
        Tcl_DecrRefCount(names);
    }
    Tcl_ResetResult(interp);
    return TCL_OK;
}

/*
 * Before the switch (watch = 0): drop every channel's file handlers from the
 * old notifier, which frees them there.  After it: register the channels'
 * interest again, now with the new notifier.
 */
static void
CarryOver(Tcl_Interp **interps, int n, int watch)
{
    int i, j, count;
    Tcl_Obj **elems;

    for (i = 0; i < n; i++) {
        Tcl_Obj *names = ChannelNames(interps[i]);

        Tcl_ListObjGetElements(NULL, names, &count, &elems);
        for (j = 0; j < count; j++) {
            Tcl_Channel chan = Tcl_GetChannel(interps[i],
                    Tcl_GetString(elems[j]), NULL);
            Tcl_DriverWatchProc *watchProc = chan == NULL ? NULL
                    : Tcl_ChannelWatchProc(Tcl_GetChannelType(chan));

            if (chan == NULL) {
                continue;
            }
            if (!watch) {
                if (watchProc != NULL) {
                    watchProc(Tcl_GetChannelInstanceData(chan), 0);
                }
                continue;
            }
            /* A handler added and removed makes Tcl watch it again. */
            Tcl_CreateChannelHandler(chan, TCL_READABLE, Nop, NULL);
            Tcl_DeleteChannelHandler(chan, Nop, NULL);
        }
        Tcl_DecrRefCount(names);
        Tcl_ResetResult(interps[i]);
    }
}

int
Weft_InstallEpoll(Tcl_Interp *interp)
{
    static Tcl_NotifierProcs procs = {
        EpSetTimer, EpWaitForEvent, EpCreateFileHandler, EpDeleteFileHandler,
        EpInitNotifier, EpFinalizeNotifier, EpAlertNotifier, EpServiceModeHook
    };
    Tcl_Interp **interps = NULL;
    int n = 0, cap = 0;

    if (installed) {
        return TCL_OK;
    }
    CollectInterps(interp, &interps, &n, &cap);
    if (Refuse(interp, interps, n) != TCL_OK) {
        ckfree((char *) interps);
        return TCL_ERROR;
    }
    CarryOver(interps, n, 0);
    Tcl_SetNotifier(&procs);
    installed = 1;
    GetTsd();
    CarryOver(interps, n, 1);
    ckfree((char *) interps);
    return TCL_OK;
}

const char *
Weft_NotifierName(void)
{
    return installed ? "epoll" : "select";
}

int
Weft_NotifierCmd(ClientData cd, Tcl_Interp *interp, int objc,
        Tcl_Obj *const objv[])
{
    const char *want;

    (void) cd;
    if (objc > 2) {
        Tcl_WrongNumArgs(interp, 1, objv, "?epoll?");
        return TCL_ERROR;
    }
    if (objc == 2) {
        want = Tcl_GetString(objv[1]);
        if (strcmp(want, "epoll") == 0) {
            if (Weft_InstallEpoll(interp) != TCL_OK) {
                return TCL_ERROR;
            }
        } else if (strcmp(want, Weft_NotifierName()) != 0) {
            return Weft_Error(interp, "NOTIFIER", "weft::notifier: cannot "
                    "switch to \"%s\": only \"epoll\" can be installed, and "
                    "it cannot be uninstalled", want);
        }
    }
    Tcl_SetObjResult(interp, Tcl_NewStringObj(Weft_NotifierName(), -1));
    return TCL_OK;
}
