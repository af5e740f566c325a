"""drover's side of Python function workers.

Standard library only, Python >= 3.8. drover runs it as

    python3 -c <this file> MODE MODULE FUNCTION [PRELOAD ...]

spawn       import MODULE, call FUNCTION, exit with the outcome.
fork        the group's *template*: import MODULE once (its module-level
            code runs once), then fork a worker per request, which calls
            FUNCTION on the template's memory, shared copy-on-write.
forkserver  the group's *server*: import only PRELOAD, then fork a worker
            per request, which imports MODULE itself and calls FUNCTION.

A template or server serves drover on fd 3, a SOCK_SEQPACKET socket, one
message a packet, integers little-endian (drover's sys::wire). A group with
listening sockets gives its template N of them at fds 3 .. 3+N-1
(LISTEN_FDS=N, LISTEN_PID the template's own PID, as systemd does): then
its socket to drover is fd 3+N. Its workers inherit the listening sockets
at those numbers and get LISTEN_PID set to their own PID.

request  seq (u64, >= 1), then fields, each a u32 length and its bytes: a
         count field (4 bytes, a u32 N), N fields KEY=VALUE (the worker's
         variables), a count field M, M fields NAME=INDEX: queue variable
         NAME (DROVER_IN_<QUEUE>, DROVER_OUT_<QUEUE>) names fd INDEX (>= 3)
         of those the request carries as SCM_RIGHTS (at most 64): stdin,
         stdout, stderr, then the queue sockets.
reply    seq (u64), errno (i32, 0 for success), pid (i32, the worker's, or
         0), then for a refusal UTF-8 text, at most 1000 bytes. One per
         request, in request order; a malformed request is refused with
         EINVAL, a packet too short to hold a seq is ignored.
hello    a reply with seq 0, once the imports are done: errno 0, or when
         they failed (after the traceback on stderr) a refusal naming the
         exception, and exit 1.

For each request it forks a worker whose parent is drover, which reaps it
like any child: with one clone(CLONE_PARENT) where that is known to be
sound (SiblingFork), else with a double fork (drover, a child subreaper,
adopts the worker). The worker runs only once the reply with its pid is
sent. With SiblingFork the template keeps the next worker forked ahead (a
*spare*, drover's child titled drover-spare, see fork_spare): a request
hands it its fds and variables, and the fork happens after the reply,
outside starts and restarts. The template exits 0 when drover closes the
socket; its spare then exits 0 too.

A forked worker keeps every fd its template opened while importing (a log
file, a socket), at its number: stdin, stdout and stderr go to 0, 1 and 2;
each queue socket stays at the number it was received at, which was free in
the template, and its variable names that number. The template's own socket
and pipe are closed. The template flushes sys.stdout and sys.stderr before
forking, so what the imports printed is written once, not by every worker.

A worker's outcome: FUNCTION returns -> exit 0; raises -> traceback on
stderr, exit 1; SystemExit(n) -> exit n.

Every process says what it is in `ps` (its command line) and `top` (its
name), rather than showing this file's source (see set_title):

    drover-worker GROUP[INDEX] MODULE:FUNCTION               name GROUP[INDEX]
    drover-template GROUP MODULE:FUNCTION                    name GROUP[tpl]
    drover-forkserver-template GROUP MODULE:FUNCTION         name GROUP[srv]
    drover-spare GROUP MODULE:FUNCTION                       name GROUP[spare]

GROUP and INDEX come from DROVER_GROUP and DROVER_INDEX (the request's, for
a forked worker).
"""
import array
import errno
import fcntl
import importlib
import os
import signal
import socket
import struct
import sys
import traceback

# The first line of this file: the original command line holds it (as the
# source given to -c), which set_title checks before writing over it.
SOURCE_MARK = b"drover's side of Python function workers."
# How a title starts once set_title wrote it.
TITLE_MARK = b"drover-"
# The longest process name (comm) Linux keeps, without its NUL.
COMM_MAX = 15
MAX_FDS = 64
MAX_REQUEST = 1 << 20
# A reply's text is cut so that the reply fits drover's buffer.
MAX_TEXT = 1000
STDIO = 3
SEQ = struct.Struct("<Q")
LENGTH = struct.Struct("<I")
REPLY = struct.Struct("<Qii")


def run(module_name, function_name):
    """Imports (or finds) the module, calls the function, returns the exit code."""
    try:
        module = importlib.import_module(module_name)
        getattr(module, function_name)()
        code = 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    flush_std()
    return code


def set_title(title, name):
    """Shows `title` as this process's command line (`ps`, `pgrep -f`,
    /proc/PID/cmdline) and `name` as its name (`top`, `ps -e`, `pgrep`).
    Best effort: where /proc is missing or refuses, the process keeps the
    interpreter's command line and name and runs on."""
    try:
        _write_cmdline(title.encode(errors="replace"))
    except Exception:
        pass
    try:
        with open("/proc/self/comm", "wb") as f:
            f.write(name.encode(errors="replace")[:COMM_MAX])
    except Exception:
        pass


def _write_cmdline(title):
    """Writes `title` over the argv strings the kernel shows as the command
    line: the area [arg_start, arg_end) of stat(5) (fields 48 and 49).

    The original area is drover's `python3 -c <this file> ...`, thousands of
    bytes, so a title fits; it is cut to the area if not. The title is one
    string, then NULs, and the area's last byte is not a NUL: the kernel
    (fs/proc/base.c, get_mm_cmdline) then takes the area for a setproctitle
    title and shows only its first string, so /proc/PID/cmdline is the title
    and not the title followed by thousands of NULs.

    The write goes through /proc/self/mem, not ctypes.memmove: a wrong
    address is then an OSError rather than a crashed worker, ctypes need not
    exist, and the bytes written are checked first to be our own command
    line (the source of this file, or a title written here, which a forked
    worker inherits from its template). The interpreter copied argv at
    startup and never reads this memory again."""
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    # Fields after the name, which may hold spaces and parentheses; the
    # first of them is field 3.
    fields = stat[stat.rindex(b")") + 2 :].split()
    start, end = int(fields[48 - 3]), int(fields[49 - 3])
    size = end - start
    if start <= 0 or size < 2:
        return
    fd = os.open("/proc/self/mem", os.O_RDWR)
    try:
        old = os.pread(fd, size, start)
        if len(old) != size or not (SOURCE_MARK in old or old.startswith(TITLE_MARK)):
            return
        title = title.replace(b"\0", b" ")[: size - 2]
        os.pwrite(fd, title + b"\0" * (size - len(title) - 1) + b" ", start)
    finally:
        os.close(fd)


def worker_title(group, index, module, function):
    """set_title's arguments for a worker."""
    tag = "[%s]" % index
    return "drover-worker %s%s %s:%s" % (group, tag, module, function), group[: COMM_MAX - len(tag)] + tag


def template_title(mode, group, module, function):
    """set_title's arguments for a fork template or a forkserver."""
    kind, tag = ("drover-template", "[tpl]") if mode == "fork" else ("drover-forkserver-template", "[srv]")
    return "%s %s %s:%s" % (kind, group, module, function), group[: COMM_MAX - len(tag)] + tag


def fresh_signals():
    """The signal state of a freshly started interpreter."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def flush_std():
    """Writes what sys.stdout and sys.stderr hold (best effort)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def become_worker(fds, env, queues):
    """In the worker: own process group, stdio at 0, 1, 2, queue sockets
    where they were received (free in the template, so they cover none of
    its files), their variables saying where, the request's environment.

    `fds` are the received fds, nothing else of the template's may be open
    here but what it opened itself."""
    os.setpgid(0, 0)
    fresh_signals()
    # A received fd below 3 (the template closed its stdin, say) would be
    # overwritten by the stdio of the next line: move it up first.
    fds = [fd if fd >= STDIO else fcntl.fcntl(fd, fcntl.F_DUPFD, STDIO) for fd in fds]
    for target, fd in enumerate(fds[:STDIO]):
        os.dup2(fd, target)
    queue_fds = {fds[index] for index in queues.values()}
    for fd in set(fds) - queue_fds - {0, 1, 2}:
        os.close(fd)
    env = dict(env)
    env.update((name, str(fds[index])) for name, index in queues.items())
    if LISTENING:
        env["LISTEN_PID"] = str(os.getpid())
    os.environ.update(env)


def receive(sock):
    """One packet and the fds it carried; (None, []) when drover closed the
    socket. A packet over MAX_REQUEST bytes or MAX_FDS fds comes cut, yet
    still over the limit, for parse_request to refuse."""
    fds = array.array("i")
    packet, ancdata, _flags, _addr = sock.recvmsg(MAX_REQUEST + 1, socket.CMSG_SPACE((MAX_FDS + 1) * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    if not packet and not fds:
        return None, []
    return packet, list(fds)


def parse_request(packet, nfds):
    """A request's (env, queues): the worker's {variable: value} and
    {queue variable: index among the `nfds` fds received}. ValueError when
    the request is malformed."""
    if len(packet) > MAX_REQUEST or nfds > MAX_FDS:
        raise ValueError("over %d bytes or %d fds" % (MAX_REQUEST, MAX_FDS))
    if nfds < STDIO:
        raise ValueError("%d fds received, stdin, stdout and stderr are needed" % nfds)
    fields = iter_fields(packet)
    env = counted_pairs(fields)
    queues = {}
    for name, index in counted_pairs(fields).items():
        if not (index.isascii() and index.isdigit() and STDIO <= int(index) < nfds):
            raise ValueError("%s names fd %r of the %d received" % (name, index, nfds))
        queues[name] = int(index)
    if next(fields, None) is not None:
        raise ValueError("more fields than counted")
    return env, queues


def iter_fields(packet):
    """The fields after a request's seq."""
    at = SEQ.size
    while at < len(packet):
        if at + LENGTH.size > len(packet):
            raise ValueError("a field's length is cut")
        (size,) = LENGTH.unpack_from(packet, at)
        at += LENGTH.size
        if at + size > len(packet):
            raise ValueError("a field is cut")
        yield packet[at : at + size]
        at += size


def counted_pairs(fields):
    """A count field N, then N fields NAME=VALUE: {NAME: VALUE}."""
    count = next(fields, b"")
    if len(count) != LENGTH.size:
        raise ValueError("a count field is missing or not 4 bytes")
    pairs = {}
    for _ in range(LENGTH.unpack(count)[0]):
        field = next(fields, None)
        if field is None:
            raise ValueError("fewer fields than counted")
        text = field.decode()
        name, equals, value = text.partition("=")
        if not name or not equals:
            raise ValueError("%r is not NAME=VALUE" % text)
        pairs[name] = value
    return pairs


def refusal(seq, number, text):
    """A reply refusing request `seq`: errno `number`, `text` cut to
    MAX_TEXT bytes on a character boundary."""
    cut = text.encode(errors="replace")[:MAX_TEXT].decode(errors="ignore")
    return REPLY.pack(seq, number, 0) + cut.encode()


def error_number(exception):
    """The errno a refusal caused by `exception` carries."""
    return getattr(exception, "errno", None) or errno.EIO


def worker(ours, go, fds, env, queues, module, function):
    """The forked worker, from its first instruction to its exit. It runs
    nothing of the user's before its template says "go" on `go`, which the
    template does once drover has its pid: a template killed in between
    leaves no worker behind that drover does not know."""
    code = 1
    try:
        set_title(*worker_title(env.get("DROVER_GROUP", "?"), env.get("DROVER_INDEX", "?"), module, function))
        for fd in ours:
            os.close(fd)
        if os.read(go, 1) != b"g":
            os._exit(0)  # the template died before drover learnt our pid
        os.close(go)
        become_worker(fds, env, queues)
        code = run(module, function)
    except BaseException:
        traceback.print_exc()
        flush_std()
    finally:
        os._exit(code)


def start_worker(sock, fds, env, queues, module, function):
    """Forks a worker whose parent is drover; returns its pid and the fd on
    which to tell it to go (write b"g", after drover has the pid; closing it
    unwritten makes the worker exit at once).

    One fork (SiblingFork) where that is known to be sound, else a double
    fork."""
    flush_std()  # or every worker writes what the imports left in the buffers
    go_r, go_w = os.pipe()
    try:
        pid = SIBLING.fork() if SIBLING is not None else None
    except BaseException:
        os.close(go_r)
        os.close(go_w)
        raise
    if pid == 0:
        worker([go_w, sock.detach()], go_r, fds, env, queues, module, function)
    if pid is not None:
        os.close(go_r)
        return pid, go_w
    return double_fork(sock, go_r, go_w, fds, env, queues, module, function)


class Spare:
    """A worker forked ahead of its request (by SiblingFork, so drover's
    child), waiting in recvmsg on `link` for the request and its fds, then
    for "go" on the pipe whose write end is `go`."""

    def __init__(self, pid, link, go):
        self.pid, self.link, self.go = pid, link, go


# The template's spare, if it has one.
SPARE = None


def fork_spare(sock, module, function):
    """Forks the next worker before its request, so that the fork (a copy of
    the template's page tables) is not part of a start or a restart: the
    request then only hands the spare its fds and variables (take_spare).

    Only with SiblingFork (a spare must already be drover's child) and only
    when its checks pass; else there is no spare and each request forks.
    A spare runs nothing of the user's before its request and "go", like
    any worker; when the template dies or closes its end, it exits 0."""
    global SPARE
    if SIBLING is None:
        return
    flush_std()
    go_r, go_w = os.pipe()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = SIBLING.fork()
    except BaseException:
        pid = None
    if pid == 0:
        spare([go_w, ours.detach(), sock.detach()], theirs, go_r, module, function)
    theirs.close()
    os.close(go_r)
    if pid is None:
        ours.close()
        os.close(go_w)
        return
    SPARE = Spare(pid, ours, go_w)


def spare(ours, link, go, module, function):
    """The spare, from its first instruction to its exit: it waits for a
    request (exits 0 at EOF: its template is gone), then is its worker."""
    code = 1
    try:
        for fd in ours:
            os.close(fd)
        group = os.environ.get("DROVER_GROUP", "?")
        set_title("drover-spare %s %s:%s" % (group, module, function), group[: COMM_MAX - 7] + "[spare]")
        packet, fds = receive(link)
        link.close()
        if packet is None:
            code = 0
        else:
            env, queues = parse_request(packet, len(fds))
            worker([], go, fds, env, queues, module, function)
    except BaseException:
        traceback.print_exc()
        flush_std()
    finally:
        os._exit(code)


def take_spare(packet, fds):
    """Hands request `packet` and its `fds` to the spare: (its pid, its go
    fd), as start_worker returns them; None without a spare, or when it
    could not take them (it died): the caller forks then."""
    global SPARE
    taken, SPARE = SPARE, None
    if taken is None:
        return None
    try:
        taken.link.sendmsg([packet], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    except OSError:
        os.close(taken.go)
        return None
    finally:
        taken.link.close()
    return taken.pid, taken.go


def double_fork(sock, go_r, go_w, fds, env, queues, module, function):
    """start_worker's fallback: a middle process forks the worker and exits,
    so that drover (a child subreaper) adopts it; two copies of the
    template's page tables and a third process, but only os.fork()."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                worker([w, go_w, sock.detach()], go_r, fds, env, queues, module, function)
            os.write(w, str(pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(go_r)
    answer = b""
    while True:
        chunk = os.read(r, 32)
        if not chunk:
            break
        answer += chunk
    os.close(r)
    os.waitpid(middle, 0)
    if not answer:
        os.close(go_w)
        raise OSError("the worker could not be forked")
    return int(answer), go_w


# The variable that makes a template use the double fork (for tests).
DOUBLE_FORK_VARIABLE = "DROVER_PYTHON_DOUBLE_FORK"
# clone(2) flags and the syscall numbers SiblingFork needs, per machine:
# clone, set_robust_list, get_robust_list, gettid, and where clone takes
# its child_tid argument (x86_64: 4th; arm64, CLONE_BACKWARDS: 5th).
CLONE_PARENT = 0x00008000
CLONE_CHILD_SETTID = 0x01000000
SYSCALLS = {"x86_64": (56, 273, 274, 186, 4), "aarch64": (220, 99, 100, 178, 5)}


class SiblingFork:
    """The template's fork, done as one clone(CLONE_PARENT | SIGCHLD): the
    worker is created as drover's child (the template's sibling) with one
    copy of the template's page tables, where a double fork makes two and a
    third process. The Rust fork server creates its children the same way.

    It is os.fork() with the fork(2) of glibc replaced by the raw syscall,
    bracketed as os.fork() brackets it: PyOS_BeforeFork, then
    PyOS_AfterFork_Child or PyOS_AfterFork_Parent (os.register_at_fork
    handlers, the import lock, threading's state), all called with the GIL
    held (ctypes.PyDLL, ctypes.pythonapi). What glibc's fork does besides
    the syscall, and how it is covered here:

    - the thread descriptor's cached TID (used by pthread_setaffinity_np,
      pthread_getcpuclockid, PI mutexes on pthread_self()): the clone passes
      CLONE_CHILD_SETTID with its address, as glibc does, found through
      glibc's _thread_db_pthread_tid (the offset libthread_db uses) and
      checked to hold gettid() before each use;
    - the robust futex list, which the kernel drops in a child: its head
      (get_robust_list) is registered again in the worker; a template
      holding a robust mutex (a non-empty list) takes the fallback;
    - pthread_atfork handlers, which glibc runs and a raw clone does not,
      and which cannot be listed: only when no object loaded in the
      template other than libc names __register_atfork or pthread_atfork
      (the loader's list of objects, read per request; the files again
      when it changed), so that none can have been registered but through
      a symbol looked up at run time (dlsym, ctypes);
    - locks other threads hold (malloc arenas, stdio, the loader's), the
      helper threads of timers and mq_notify: only when the template has a
      single thread (/proc/self/task, per request);
    - glibc's pid cache (gone since 2.25), the vDSO getrandom state
      (wiped by the kernel on fork), rseq (kept by the kernel): nothing to
      do.

    Not glibc, another machine, ctypes missing, any check failing or the
    clone refused with EINVAL: the double fork (start_worker), which uses
    only os.fork(). DROVER_PYTHON_DOUBLE_FORK=1 in the template's
    environment forces it."""

    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.clone_nr, self.set_robust_nr, self.get_robust_nr, self.gettid_nr, self.ctid_at = SYSCALLS[os.uname().machine]
        libc = ctypes.PyDLL(None, use_errno=True)
        self.syscall = libc.syscall
        self.syscall.restype = ctypes.c_long
        pthread_self = libc.pthread_self
        pthread_self.restype = ctypes.c_void_p
        pthread_self.argtypes = []
        bits, count, offset = (ctypes.c_uint32 * 3).in_dll(libc, "_thread_db_pthread_tid")
        size = ctypes.c_uint32.in_dll(libc, "_thread_db_sizeof_pthread").value
        if bits != 32 or count != 1 or offset + 4 > size:
            raise OSError("glibc's thread descriptor is not as expected")
        self.descriptor = pthread_self()
        self.tid = self.descriptor + offset
        head, length = ctypes.c_void_p(), ctypes.c_size_t()
        if self.call(self.get_robust_nr, 0, ctypes.byref(head), ctypes.byref(length)) != 0 or not head.value:
            raise OSError("no robust list")
        self.robust_head, self.robust_length = head.value, length.value
        api = ctypes.pythonapi
        self.before, self.after_child, self.after_parent = (
            api.PyOS_BeforeFork,
            api.PyOS_AfterFork_Child,
            api.PyOS_AfterFork_Parent,
        )
        for f in (self.before, self.after_child, self.after_parent):
            f.restype, f.argtypes = None, []
        # struct link_map's public head (link.h) and glibc's _r_debug.
        c_void_p = ctypes.c_void_p
        fields = [("l_addr", c_void_p), ("l_name", ctypes.c_char_p), ("l_ld", c_void_p), ("l_next", c_void_p)]
        self.LinkMap = type("LinkMap", (ctypes.Structure,), {"_fields_": fields})
        self.r_debug = ctypes.addressof(ctypes.c_int.in_dll(libc, "_r_debug"))
        self.executable = os.fsencode(os.readlink("/proc/self/exe"))
        self.objects, self.atfork_free, self.checked = None, False, {}

    def call(self, number, *args):
        c_long = self.ctypes.c_long
        return self.syscall(c_long(number), *(a if not isinstance(a, int) else c_long(a) for a in args))

    def sound(self):
        """Whether the clone is known to be sound now (see the class)."""
        if len(os.listdir("/proc/self/task")) != 1:
            return False
        if self.ctypes.c_int.from_address(self.tid).value != self.call(self.gettid_nr):
            return False
        if self.ctypes.c_void_p.from_address(self.robust_head).value != self.robust_head:
            return False
        objects = self.loaded()
        if objects != self.objects:
            self.objects = objects
            self.atfork_free = all(self.checked_file(path) for path in objects if path.startswith(b"/"))
        return self.atfork_free

    def loaded(self):
        """The paths of the objects the dynamic loader has loaded (its
        r_debug list, as debuggers read it): the executable, then the
        libraries in load order; the vDSO's name is not a path."""
        paths = [self.executable]
        at = self.ctypes.c_void_p.from_address(self.r_debug + self.ctypes.sizeof(self.ctypes.c_void_p)).value
        while at:
            entry = self.LinkMap.from_address(at)
            if entry.l_name:
                paths.append(entry.l_name)
            at = entry.l_next
        return paths

    def checked_file(self, path):
        """no_atfork(path), each file read once."""
        ok = self.checked.get(path)
        if ok is None:
            ok = self.checked[path] = self.no_atfork(path)
        return ok

    @staticmethod
    def no_atfork(path):
        """Whether the mapped file `path` cannot register pthread_atfork
        handlers: it is libc, a file that is not a shared object, or one
        whose bytes do not name __register_atfork (which pthread_atfork
        calls). Unreadable: it might."""
        import mmap

        name = os.path.basename(path)
        if name.startswith(b"libc.so") or name.startswith(b"libc-"):
            return True
        try:
            with open(path, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    return True
                with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
                    return data.find(b"__register_atfork") < 0 and data.find(b"pthread_atfork") < 0
        except (OSError, ValueError):
            return False

    def fork(self):
        """0 in the worker, its pid in the template; None when the fallback
        must fork it (see the class). OSError when the clone fails."""
        if not self.sound():
            return None
        c_long = self.ctypes.c_long
        args = [c_long(self.clone_nr), c_long(CLONE_PARENT | CLONE_CHILD_SETTID | signal.SIGCHLD)]
        args += [c_long(0)] * 4
        args[self.ctid_at] = c_long(self.tid)  # args[0] is the syscall's number
        syscall = self.syscall
        self.before()
        pid = syscall(*args)
        if pid == 0:
            self.after_child()
            self.call(self.set_robust_nr, self.robust_head, self.robust_length)
            return 0
        number = self.ctypes.get_errno()
        self.after_parent()
        if pid > 0:
            return pid
        if number in (errno.EINVAL, errno.EPERM):  # CLONE_PARENT refused (an init, a filter)
            return None
        raise OSError(number, os.strerror(number))


def sibling_fork():
    """A SiblingFork where it may be used, else None (see the class)."""
    if os.environ.get(DOUBLE_FORK_VARIABLE):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (ValueError, OSError):
        return None
    try:
        sibling = SiblingFork()
        sibling.sound()  # reads the loaded objects now, not at the first request
        return sibling
    except Exception:
        return None


SIBLING = None


def serve(sock, module, function):
    while True:
        packet, fds = receive(sock)
        if packet is None:
            return 0
        reply, go = reply_to(sock, packet, fds, module, function)
        for fd in fds:
            os.close(fd)
        if reply is None:
            continue
        sock.send(reply)
        if go is not None:
            # drover has the pid now: the worker may run.
            os.write(go, b"g")
            os.close(go)
        if SPARE is None:
            fork_spare(sock, module, function)


def reply_to(sock, packet, fds, module, function):
    """The reply to a request packet (None to one too short to hold a seq)
    and the go fd of the worker it started (None if none)."""
    if len(packet) < SEQ.size:
        return None, None
    (seq,) = SEQ.unpack_from(packet)
    try:
        env, queues = parse_request(packet, len(fds))
    except ValueError as e:
        return refusal(seq, errno.EINVAL, "malformed request: %s" % e), None
    try:
        pid, go = take_spare(packet, fds) or start_worker(sock, fds, env, queues, module, function)
    except Exception as e:
        return refusal(seq, error_number(e), str(e)), None
    return REPLY.pack(seq, 0, pid), go


class DroverModule:
    """`import drover` gives the queue helper module drover ships (its
    source is put before this file as `_DROVER_MODULE`), unless a module of
    that name is found on sys.path first: this finder comes last."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "drover" or "_DROVER_MODULE" not in globals():
            return None
        import importlib.util

        return importlib.util.spec_from_loader(name, cls, origin="built into drover")

    @staticmethod
    def create_module(spec):
        return None

    @staticmethod
    def exec_module(module):
        source = globals()["_DROVER_MODULE"]
        exec(compile(source, "<drover>/drover.py", "exec"), module.__dict__)


# How many listening sockets the template holds at 3.. for its workers.
LISTENING = 0


def listening_sockets():
    """The number of listening sockets this process was given at fd 3..
    (systemd's rule: LISTEN_FDS counts only if LISTEN_PID is this process)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return 0
    try:
        return max(0, int(os.environ.get("LISTEN_FDS", "0")))
    except ValueError:
        return 0


def main(argv):
    mode, module, function, preload = argv[0], argv[1], argv[2], argv[3:]
    sys.argv = [module]
    sys.path.insert(0, os.getcwd())
    sys.meta_path.append(DroverModule)
    group = os.environ.get("DROVER_GROUP", "?")
    if mode == "spawn":
        set_title(*worker_title(group, os.environ.get("DROVER_INDEX", "?"), module, function))
        return run(module, function)
    set_title(*template_title(mode, group, module, function))
    global LISTENING
    LISTENING = listening_sockets()
    sock = socket.socket(fileno=STDIO + LISTENING)
    try:
        for name in preload if mode == "forkserver" else [module]:
            importlib.import_module(name)
    except Exception as e:
        traceback.print_exc()
        flush_std()
        summary = traceback.format_exception_only(type(e), e)[-1].strip()
        try:
            sock.send(refusal(0, error_number(e), summary))
        except OSError:
            pass  # drover is gone
        return 1
    flush_std()
    global SIBLING
    SIBLING = sibling_fork()
    sock.send(REPLY.pack(0, 0, 0))
    fork_spare(sock, module, function)
    return serve(sock, module, function)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
