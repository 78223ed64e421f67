# weft-gdb.py: gdb commands that show a weft program's coroutines, in a live process or a
# core file, from the scheduler's own structures (src/internal.h: the fields marked [gdb],
# reached through the thread-local tls_sched in src/sched.c).
#
#   weft coroutines      one line per coroutine of every thread's scheduler, as weft_dump
#   weft bt ID|NAME      the backtrace of a coroutine that is not running (ID as in "#12")
#
# Load it with  gdb -x PREFIX/share/weft/weft-gdb.py PROGRAM PID|CORE  (or `source` it).
# The program needs debug information (-g; -O2 is fine). weft bt unwinds a parked coroutine
# from the registers its context switch saved: on x86-64, with the hand-written switch
# (src/ctx/ctx_x86_64.S) or with ucontext (CTX=ucontext).

import os
import time

import gdb

try:
    from gdb.unwinder import Unwinder, register_unwinder
except ImportError:  # a gdb built without the unwinder API
    Unwinder = None
try:
    from gdb.unwinder import FrameId
except ImportError:  # before gdb 14: any object with sp and pc will do
    class FrameId:
        def __init__(self, sp, pc):
            self.sp = sp
            self.pc = pc


# ---- Reading the scheduler ----

def enum_names(type_name, fallback):
    """value -> name of an enum of the program; fallback (same order) if its debug
    information lacks the type."""
    try:
        return {int(f.enumval): f.name for f in gdb.lookup_type(type_name).fields()}
    except gdb.error:
        return dict(enumerate(fallback))


def states():
    return enum_names("enum co_state",
                      ["CO_READY", "CO_RUNNING", "CO_PARKED", "CO_DONE", "CO_ORPHAN"])


def wait_kinds():
    return enum_names("enum wait_kind",
                      ["WAIT_OTHER", "WAIT_READ", "WAIT_WRITE", "WAIT_OP", "WAIT_SLEEP",
                       "WAIT_JOIN", "WAIT_QUEUE_SEND", "WAIT_QUEUE_RECV", "WAIT_SELECT",
                       "WAIT_MUTEX", "WAIT_COND", "WAIT_WAITGROUP", "WAIT_GROUP", "WAIT_TURN",
                       "WAIT_TQUEUE_SEND", "WAIT_TQUEUE_RECV", "WAIT_OFFLOAD",
                       "WAIT_DELIVERY", "WAIT_SERVER"])


def thread_sched():
    """The selected thread's scheduler (a sched *), or None."""
    try:
        s = gdb.parse_and_eval("'sched.c'::tls_sched")
    except gdb.error:
        try:
            s = gdb.parse_and_eval("tls_sched")
        except gdb.error:
            return None
    return s if int(s) != 0 else None


def schedulers():
    """[(thread, sched *)] for every thread that has a scheduler; the thread selected before
    is selected again afterwards."""
    inferior = gdb.selected_inferior()
    before = gdb.selected_thread()
    found = []
    try:
        for t in sorted(inferior.threads(), key=lambda t: t.num):
            t.switch()
            s = thread_sched()
            if s is not None:
                found.append((t, s))
    finally:
        if before is not None and before.is_valid():
            before.switch()
    return found


def coroutines(s):
    """The coroutines of scheduler s, oldest first (a list that loops, in the core of a
    process whose memory was corrupted, is cut where it comes back)."""
    cos, seen = [], set()
    co = s["all"]
    while int(co) != 0 and int(co) not in seen:
        seen.add(int(co))
        cos.append(co)
        co = co["all_next"]
    cos.reverse()
    return cos


def co_name(co):
    try:
        return co["name"].string(errors="replace")
    except gdb.error:
        return "?"


def live_pid():
    """The process's pid when gdb is attached to a running one on this machine, else None
    (a core file)."""
    inferior = gdb.selected_inferior()
    connection = getattr(inferior, "connection", None)
    if connection is not None and connection.type != "native":
        return None
    if inferior.pid <= 0 or not os.path.isdir("/proc/%d" % inferior.pid):
        return None
    return inferior.pid


# ---- Descriptors' peers (live processes only, from /proc) ----

def parse_addr(hexaddr):
    ip, port = hexaddr.split(":")
    port = int(port, 16)
    raw = bytes.fromhex(ip)
    # /proc/net/tcp prints the address as 32-bit words in host order (little-endian here).
    words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]
    data = b"".join(words)
    if len(data) == 4:
        return "%s:%d" % (".".join(str(b) for b in data), port)
    if data[:12] == b"\0" * 10 + b"\xff\xff":
        return "%s:%d" % (".".join(str(b) for b in data[12:]), port)
    groups = ["%x" % int.from_bytes(data[i:i + 2], "big") for i in range(0, 16, 2)]
    return "[%s]:%d" % (":".join(groups), port)


class Sockets:
    """inode -> (local, remote, listening) of the process's TCP sockets, read once."""

    def __init__(self, pid):
        self.pid = pid
        self.by_inode = None

    def load(self):
        self.by_inode = {}
        for name in ("tcp", "tcp6"):
            try:
                with open("/proc/%d/net/%s" % (self.pid, name)) as f:
                    next(f)
                    for line in f:
                        cols = line.split()
                        listening = cols[3] == "0A"
                        self.by_inode[cols[9]] = (parse_addr(cols[1]), parse_addr(cols[2]),
                                                  listening)
            except (OSError, ValueError, IndexError, StopIteration):
                pass

    def describe(self, fd):
        if self.pid is None:
            return ""
        try:
            link = os.readlink("/proc/%d/fd/%d" % (self.pid, fd))
        except OSError:
            return ""
        if not link.startswith("socket:["):
            return ", " + link
        if self.by_inode is None:
            self.load()
        found = self.by_inode.get(link[8:-1])
        if not found:
            return ""
        local, remote, listening = found
        return ", listening on %s" % local if listening else ", peer %s" % remote


# ---- Stacks ----

PAGE = 4096


def resident_live(pid, lo, size):
    """Bytes of [lo, lo + size) in memory, from /proc/PID/pagemap (present or swapped)."""
    first = lo // PAGE
    count = (lo + size + PAGE - 1) // PAGE - first
    try:
        with open("/proc/%d/pagemap" % pid, "rb") as f:
            f.seek(first * 8)
            data = f.read(count * 8)
    except OSError:
        return None
    pages = 0
    for i in range(0, len(data), 8):
        entry = int.from_bytes(data[i:i + 8], "little")
        if entry & (3 << 62):
            pages += 1
    return pages * PAGE


def touched_in_core(lo, size, sp):
    """In a core file, where pages never touched read as zeros: from the page of sp down,
    the pages up to the first all-zero one (a touched page that holds only zeros ends the
    count early)."""
    inferior = gdb.selected_inferior()
    top = lo + size
    page = max(lo, sp - sp % PAGE)
    try:
        while page - PAGE >= lo and any(bytes(inferior.read_memory(page - PAGE, PAGE))):
            page -= PAGE
    except gdb.MemoryError:
        return None
    return top - page


def stack_use(co, pid, running_sp):
    st = co["stack"]
    if int(st) == 0:
        return "-"
    lo, size = int(st["lo"]), int(st["size"])
    # the span as spawned: the stack's record and the coroutine's sit at its top (dump.c)
    span = int(st["map_size"]) - (int(st["guard"]) if bool(st["guarded"]) else 0)
    if pid is not None:
        used = resident_live(pid, lo, size)
    else:
        used = touched_in_core(lo, size, running_sp or saved_sp(co) or lo + size)
    if used is None:
        return "?/%dK" % (span // 1024)
    return "%dK/%dK" % (used // 1024, span // 1024)


# ---- What a coroutine waits on (the words of src/dump.c) ----

def describe_wait(co, kind, sockets):
    on = co["wait_on"]
    obj = int(on["obj"])
    if kind in ("WAIT_READ", "WAIT_WRITE"):
        fd = int(on["fd"])
        return "%s fd %d%s" % ("read" if kind == "WAIT_READ" else "write", fd,
                               sockets.describe(fd))
    if kind == "WAIT_OP":
        op = on["obj"].cast(gdb.lookup_type("io_op").pointer())
        ops = enum_names("enum io_op_kind", ["IO_OP_RECV", "IO_OP_SEND", "IO_OP_READ",
                                             "IO_OP_WRITE", "IO_OP_ACCEPT", "IO_OP_CONNECT"])
        name = ops.get(int(op["kind"]), "IO_OP_OPERATION")[len("IO_OP_"):].lower()
        fd = int(op["fd"])
        return "%s on fd %d%s" % (name, fd, sockets.describe(fd))
    if kind == "WAIT_JOIN":
        return "join %s" % co_ref(on["obj"].cast(gdb.lookup_type("weft_co").pointer()))
    more = object_details(kind, on["obj"])
    if more is not None:
        return more
    words = {
        "WAIT_SLEEP": "sleep",
        "WAIT_QUEUE_SEND": "queue 0x%x (send)",
        "WAIT_QUEUE_RECV": "queue 0x%x (receive)",
        "WAIT_SELECT": "select on queues",
        "WAIT_MUTEX": "mutex 0x%x",
        "WAIT_COND": "condition 0x%x",
        "WAIT_WAITGROUP": "wait group 0x%x",
        "WAIT_GROUP": "group 0x%x",
        "WAIT_TURN": "write turn of channel 0x%x",
        "WAIT_TQUEUE_SEND": "thread queue 0x%x (send)",
        "WAIT_TQUEUE_RECV": "thread queue 0x%x (receive)",
        "WAIT_OFFLOAD": "offloaded call 0x%x",
        "WAIT_DELIVERY": "a wake-up from another thread",
        "WAIT_SERVER": "a handler of server 0x%x to end",
    }
    text = words.get(kind, "something else")
    if kind == "WAIT_OFFLOAD":
        sym = gdb.execute("info symbol 0x%x" % obj, to_string=True).split()
        if sym and sym[0] != "No":
            return "offloaded call %s()" % sym[0]
    return text % obj if "%" in text else text


def co_ref(co):
    return '#%d "%s"' % (int(co["id"]), co_name(co))


def object_details(kind, obj):
    """The words of src/dump.c for a queue, mutex, wait group or group, with what their
    structures (private to sync.c and group.c, but in the debug information) hold; None if
    kind is none of those or the types are missing."""
    addr = int(obj)
    try:
        if kind in ("WAIT_QUEUE_SEND", "WAIT_QUEUE_RECV"):
            q = obj.cast(gdb.lookup_type("struct weft_queue").pointer())
            return "queue 0x%x (%s, %d queued)" % (
                addr, "send" if kind == "WAIT_QUEUE_SEND" else "receive", int(q["ring"]["len"]))
        if kind == "WAIT_MUTEX":
            owner = int(obj.cast(gdb.lookup_type("struct weft_mutex").pointer())["owner"])
            if owner == 0:
                return "mutex 0x%x (being handed over)" % addr
            for _, s in schedulers():
                for co in coroutines(s):
                    if int(co) == owner:
                        return "mutex 0x%x, held by %s" % (addr, co_ref(co))
            return "mutex 0x%x, held outside coroutines" % addr
        if kind == "WAIT_WAITGROUP":
            wg = obj.cast(gdb.lookup_type("struct weft_waitgroup").pointer())
            return "wait group 0x%x (count %d)" % (addr, int(wg["count"]))
        if kind == "WAIT_GROUP":
            g = obj.cast(gdb.lookup_type("struct weft_group").pointer())
            return "group 0x%x (%d running)" % (addr, int(g["count"]))
    except gdb.error:
        return None
    return None


def secs(ms):
    ms = max(0, int(ms))
    return "%d.%03ds" % (ms // 1000, ms % 1000)


def co_line(co, s, now_ms, pid, sockets, kinds, state_names, running_sp):
    state = state_names.get(int(co["state"]), "?")
    word = {"CO_READY": "ready", "CO_RUNNING": "running", "CO_PARKED": "parked",
            "CO_DONE": "ended"}.get(state, "orphan")
    line = '  #%d "%s" %s' % (int(co["id"]), co_name(co), word)
    if state == "CO_PARKED":
        mark = int(co["wait_mark"])
        kind = kinds.get(mark & 0xff, "WAIT_OTHER")
        line += " %s: %s" % (secs(now_ms - (mark >> 8)), describe_wait(co, kind, sockets))
        deadline = int(co["deadline"])
        if deadline >= 0:
            line += ", %s %s" % ("wakes in" if kind == "WAIT_SLEEP" else "times out in",
                                 secs(deadline - now_ms))
    current = co_is_current(co, s)
    if current and in_deep_call(s):
        # its own frames are suspended below a deep call (src/deep.c): its sp is the one saved
        line += " (in a deep call, on the thread's deep-call stack)"
        running_sp = ctx_sp(s["deep"]["caller"])
    line += "; stack %s" % stack_use(co, pid, running_sp if current else None)
    return line


def co_is_current(co, s):
    return int(s["current"]) == int(co)


def in_deep_call(s):
    """Whether the running coroutine of s is inside a deep call (src/deep.c); False for a
    program built before deep calls."""
    try:
        return bool(s["in_deep"]) and int(s["deep"]) != 0
    except gdb.error:
        return False


def deep_stack_line(s, pid):
    """The thread's deep-call stack, as "deep-call stack 12K/512K", or None."""
    try:
        d = s["deep"]
    except gdb.error:
        return None
    if int(d) == 0:
        return None
    st = d["st"]
    lo, size = int(st["lo"]), int(st["size"])
    span = int(st["map_size"]) - (int(st["guard"]) if bool(st["guarded"]) else 0)
    used = resident_live(pid, lo, size) if pid is not None else None
    return "deep-call stack %s/%dK%s" % ("?" if used is None else "%dK" % (used // 1024),
                                           span // 1024, ", in use" if in_deep_call(s) else "")


def monotonic_ms():
    return int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1000)


class WeftPrefix(gdb.Command):
    """Commands for weft's coroutines: weft coroutines, weft bt ID|NAME."""

    def __init__(self):
        super().__init__("weft", gdb.COMMAND_DATA, gdb.COMPLETE_NONE, True)


class WeftCoroutines(gdb.Command):
    """List every coroutine of every thread's weft scheduler, as weft_dump does: id, name,
state, what a parked one waits on, for how long, and its stack (in memory / size). In a core
file, times are as of the loop's last turn and a stack's use is estimated from its non-zero
pages."""

    def __init__(self):
        super().__init__("weft coroutines", gdb.COMMAND_DATA)

    def invoke(self, arg, from_tty):
        found = schedulers()
        if not found:
            print("weft: no thread has a weft scheduler (or no debug information for it)")
            return
        pid = live_pid()
        sockets = Sockets(pid)
        kinds, state_names = wait_kinds(), states()
        before = gdb.selected_thread()
        try:
            for thread, s in found:
                thread.switch()
                self.show(thread, s, pid, sockets, kinds, state_names)
        finally:
            if before is not None and before.is_valid():
                before.switch()

    def show(self, thread, s, pid, sockets, kinds, state_names):
        now_ms = monotonic_ms() if pid is not None else int(s["turn_ms"])
        backend = s["be"]["ops"]["name"].string()
        cos = coroutines(s)
        print("weft: thread %d (gdb thread %d), backend %s, %d coroutines%s" %
              (thread.ptid[1], thread.num, backend, len(cos),
               "" if pid is not None else " (times as of the loop's last turn)"))
        running_sp = int(gdb.parse_and_eval("$sp"))
        counts = {}
        for co in cos:
            print(co_line(co, s, now_ms, pid, sockets, kinds, state_names, running_sp))
            state = state_names.get(int(co["state"]), "?")
            counts[state] = counts.get(state, 0) + 1
        deep = deep_stack_line(s, pid)
        if deep:
            print("  " + deep)
        print("weft: %d coroutines: %d running, %d ready, %d parked (%d on I/O); "
              "%d turns, %d switches, %d events, %d timers" %
              (len(cos), counts.get("CO_RUNNING", 0), counts.get("CO_READY", 0),
               counts.get("CO_PARKED", 0), int(s["io_waiting"]), int(s["turns"]),
               int(s["switches"]), int(s["be"]["dispatched"]), int(s["timers"]["len"])))


# ---- Backtraces of parked coroutines ----

def ctx_sp(ctx):
    try:
        return int(ctx["sp"])
    except gdb.error:  # CTX=ucontext
        return int(ctx["uc"]["uc_mcontext"]["gregs"][15])


def saved_sp(co):
    try:
        return ctx_sp(co["ctx"])
    except gdb.error:
        return None


def saved_registers(ctx):
    """The registers a suspended context (a coroutine's, or one inside a deep call, saved by
    the switch into it) resumes with: {name: value}."""
    names = [f.name for f in ctx.type.strip_typedefs().fields()]
    if "uc" in names:  # CTX=ucontext: glibc's x86-64 gregs indices
        g = ctx["uc"]["uc_mcontext"]["gregs"]
        idx = {"r12": 4, "r13": 5, "r14": 6, "r15": 7, "rbp": 10, "rbx": 11, "rsp": 15,
               "rip": 16}
        return {r: int(g[i]) & 0xffffffffffffffff for r, i in idx.items()}
    # src/ctx/ctx_x86_64.S pushed rbp, rbx, r12, r13, r14, r15, then 8 bytes of MXCSR and
    # x87 control word, below the return address into switch_out (or ctx_trampoline).
    sp = int(ctx["sp"])
    mem = bytes(gdb.selected_inferior().read_memory(sp, 64))
    word = lambda i: int.from_bytes(mem[8 * i:8 * i + 8], "little")
    return {"r15": word(1), "r14": word(2), "r13": word(3), "r12": word(4), "rbx": word(5),
            "rbp": word(6), "rip": word(7), "rsp": sp + 64}


if Unwinder is not None:
    class CoroutineUnwinder(Unwinder):
        """While `weft bt` runs, the caller of the selected thread's innermost frame is the
        coroutine's suspended context: its saved registers."""

        def __init__(self):
            super().__init__("weft-coroutine")
            self.regs = None
            self.level = 0  # the thread's innermost frame that is not an inlined one

        def __call__(self, pending_frame):
            if self.regs is None or pending_frame.level() != self.level:
                return None
            sp = pending_frame.read_register("rsp")
            pc = pending_frame.read_register("rip")
            # gdb stops a backtrace whose older frame lies below (inner to) a newer one, as
            # a coroutine's stack may lie below the thread's: this frame's id says it lies
            # below the coroutine's.
            inner = gdb.Value(self.regs["rsp"] - 256).cast(sp.type)
            info = pending_frame.create_unwind_info(FrameId(inner, pc))
            for name, value in self.regs.items():
                like = pc if name == "rip" else sp
                info.add_saved_register(name, gdb.Value(value).cast(like.type))
            return info

    UNWINDER = CoroutineUnwinder()
    register_unwinder(None, UNWINDER, replace=True)
else:
    UNWINDER = None


def find_coroutine(arg):
    """(thread, sched, co) whose id is arg ("12" or "#12") or whose name is arg."""
    want = arg.strip()
    by_id = want.lstrip("#")
    for thread, s in schedulers():
        for co in coroutines(s):
            if (by_id.isdigit() and int(co["id"]) == int(by_id)) or co_name(co) == want:
                return thread, s, co
    return None


def frame_line(i, frame):
    name = frame.name() or "??"
    sal = frame.find_sal()
    where = ""
    if sal is not None and sal.symtab is not None:
        where = " at %s:%d" % (sal.symtab.filename, sal.line)
    elif frame.pc():
        lib = gdb.solib_name(frame.pc())
        where = " from %s" % lib if lib else ""
    inline = " [inlined]" if frame.type() == gdb.INLINE_FRAME else ""
    return "#%-3d 0x%016x in %s%s%s" % (i, frame.pc(), name, inline, where)


class WeftBacktrace(gdb.Command):
    """weft bt ID|NAME: the backtrace of a weft coroutine that is not running (parked, or
ready), by its id (as `weft coroutines` shows it, "#12" or "12") or its name."""

    def __init__(self):
        super().__init__("weft bt", gdb.COMMAND_STACK)

    def invoke(self, arg, from_tty):
        if not arg.strip():
            raise gdb.GdbError("usage: weft bt ID|NAME")
        found = find_coroutine(arg)
        if not found:
            raise gdb.GdbError("weft: no coroutine %s" % arg.strip())
        thread, s, co = found
        print('coroutine #%d "%s" (gdb thread %d):' % (int(co["id"]), co_name(co), thread.num))
        ctx = co["ctx"]
        if co_is_current(co, s):
            if not in_deep_call(s):
                print("  running: its frames are gdb thread %d's own (thread %d; bt)" %
                      (thread.num, thread.num))
                return
            # The thread runs the deep call (bt shows it); the coroutine's own frames are
            # below the switch into it, saved as a suspended coroutine's are.
            print("  running a deep call (gdb thread %d's bt); its own frames:" % thread.num)
            ctx = s["deep"]["caller"]
        arch = gdb.selected_inferior().architecture().name()
        if not arch.endswith("x86-64") or UNWINDER is None:
            raise gdb.GdbError("weft bt: only on x86-64 with gdb's unwinder API (this is %s)"
                               % arch)
        before = gdb.selected_thread()
        thread.switch()
        # The thread may stop inside a function inlined into another (a system call's
        # wrapper in libc): gdb unwinds those itself, so the switch is below the first
        # frame that is not inlined.
        innermost = gdb.newest_frame()
        while innermost.type() == gdb.INLINE_FRAME and innermost.older() is not None:
            innermost = innermost.older()
        UNWINDER.level = innermost.level()
        UNWINDER.regs = saved_registers(ctx)
        gdb.invalidate_cached_frames()
        try:
            frame = gdb.newest_frame()
            while frame is not None and frame.level() < UNWINDER.level:
                frame = frame.older()
            frame = frame.older() if frame is not None else None
            i = 0
            while frame is not None and i < 100:
                print(frame_line(i, frame))
                older = frame.older()
                if older is None and frame.unwind_stop_reason() > gdb.FRAME_UNWIND_OUTERMOST:
                    print("(backtrace stopped: %s)" %
                          gdb.frame_stop_reason_string(frame.unwind_stop_reason()))
                frame = older
                i += 1
        finally:
            UNWINDER.regs = None
            gdb.invalidate_cached_frames()
            if before is not None and before.is_valid():
                before.switch()


WeftPrefix()
WeftCoroutines()
WeftBacktrace()
