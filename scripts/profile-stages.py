#!/usr/bin/env python3
"""Sampled CPU time per request, by stage, from scripts/profile.sh's output.

    scripts/profile-stages.py target/profile/check
    scripts/profile-stages.py target/profile/check target/profile/check@3000

Each argument names one profile by its path without the extension: the
collapsed stacks (NAME.folded, from `perf script | inferno-collapse-perf`)
and the load generator's report (NAME.load.txt, whose `portcullis` or
`empty` line gives the requests sent while perf sampled). With two or more
profiles the table has a column for each; with two, a last column gives
the second over the first: comparing one load at saturation with the same
load at a fixed rate shows which stages cost more per request when
requests come alone.

perf samples `cpu-clock` (this machine's virtual CPUs count no cycles), so
a stack's weight is CPU time in nanoseconds; the table gives microseconds
of the server's CPU per request. A sample belongs to the first stage in
STAGES that names one of its frames: system calls first (by the kernel's
entry and the call; Portcullis's write(2) calls are its audit file's, as
its sockets are written with sendto), then the decision's stages, then
the transport. The
rows are an attribution of samples, not a trace: time the server spent
waiting is not sampled at all.
"""
import sys

# (label, substrings of a frame's name); a sample goes to the first label
# one of whose substrings is in one of its frames.
STAGES = [
    ("syscall: epoll_wait", ["do_epoll_wait"]),
    ("syscall: recvfrom (socket read)", ["__sys_recvfrom"]),
    ("syscall: sendto (socket write)", ["__sys_sendto"]),
    ("syscall: write", ["ksys_write"]),
    ("syscall: futex", ["do_futex"]),
    ("syscall: other", ["entry_SYSCALL"]),
    ("interrupts", ["asm_sysvec", "asm_common_interrupt"]),
    ("decision: authentication", ["authn::Authenticator::authenticate"]),
    ("decision: route", ["pipeline::stages::route::route"]),
    ("decision: Cedar authorization", ["pipeline::stages::authorize"]),
    ("decision: body validation", ["pipeline::stages::validate"]),
    ("decision: quota charge", ["pipeline::stages::charge"]),
    ("decision: other stages", ["pipeline::access"]),
    ("decision record and metrics", ["pipeline::record"]),
    ("audit writer task", ["audit::writer::Chain::run_task", "audit::writer::Chain::run_thread"]),
    ("ShouldRateLimit decision", ["pipeline::calls::ratelimit"]),
    ("response encoding", ["check_encode", "Encoder>::encode", "EncodeBody"]),
    ("request decoding", ["Decoder>::decode", "CheckDecoder"]),
    ("coalesced socket writes", ["coalesce::Coalesced"]),
    ("HTTP/2 frames read", ["h2::codec::framed_read", "Codec<T,B> as futures_core::stream::Stream>::poll_next"]),
    ("HTTP/2 and tonic, other", ["h2::", "hyper::", "tonic::"]),
    ("runtime: park and I/O driver", ["park", "runtime::io::driver"]),
    ("runtime: scheduling", ["tokio::runtime"]),
    ("other", [""]),
]


def requests(name):
    """The requests of NAME.load.txt's server line (its 2nd column)."""
    with open(name + ".load.txt") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[0] in ("portcullis", "empty") and fields[1].isdigit():
                return int(fields[1])
    sys.exit(f"profile-stages: {name}.load.txt has no server line with a request count")


def stages(name):
    """Nanoseconds sampled per stage label in NAME.folded."""
    totals = dict.fromkeys((label for label, _ in STAGES), 0)
    with open(name + ".folded") as f:
        for line in f:
            stack, _, weight = line.rstrip("\n").rpartition(" ")
            if not stack or not weight.isdigit():
                sys.exit(f"profile-stages: {name}.folded: not a collapsed stack line: {line[:80]!r}")
            frames = stack.split(";")
            for label, needles in STAGES:
                if any(n in fr for n in needles for fr in frames):
                    totals[label] += int(weight)
                    break
    return totals


def main(names):
    if not names:
        sys.exit(__doc__.strip().split("\n\n")[1])
    columns = []
    for name in names:
        n = requests(name)
        if n == 0:
            sys.exit(f"profile-stages: {name}.load.txt: the load sent no request")
        columns.append({k: v / n / 1000 for k, v in stages(name).items()})
    heads = [name.rsplit("/", 1)[-1] for name in names]
    width = max(len(label) for label, _ in STAGES)
    col = max(14, *(len(h) + 2 for h in heads))
    ratio = len(columns) == 2
    print(f"{'us of server CPU per request':<{width}}" + "".join(f"{h:>{col}}" for h in heads)
          + (f"{'2nd/1st':>9}" if ratio else ""))
    rows = [label for label, _ in STAGES] + ["total"]
    for c in columns:
        c["total"] = sum(c.values())
    for label in rows:
        if all(c[label] == 0 for c in columns):
            continue
        line = f"{label:<{width}}" + "".join(f"{c[label]:>{col}.2f}" for c in columns)
        if ratio:
            first, second = columns[0][label], columns[1][label]
            line += f"{second / first:>9.2f}" if first else f"{'-':>9}"
        print(line)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except OSError as e:
        sys.exit(f"profile-stages: {e.filename}: {e.strerror} (run scripts/profile.sh first)")
