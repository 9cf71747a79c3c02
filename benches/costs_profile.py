#!/usr/bin/env python3
"""Groups a profile by component, for benches/costs.sh.

  costs_profile.py callgrind SMALL.out LARGE.out REQUESTS
      Self instructions per function from `callgrind_annotate` of two runs of
      the same proxy (N_SMALL and N_LARGE requests); the difference divided by
      REQUESTS is the cost per request with startup and warm-up cancelled.
      Prints: components (self instructions per request and share), the top
      functions, and the inclusive cost of the project's own entry points.
  costs_profile.py perf SYMS.txt
      `perf report --sort sym --no-children -g none` output: shares by
      component, kernel included (cpu-clock sampling).
"""

import re
import subprocess
import sys

# (component, regex on the function's own path), first match wins. The
# "own path" is the type or module a function belongs to: for
# `<hyper::proto::h1::conn::Conn<..handover..> as X>::poll` it is
# `hyper::proto::h1::conn::Conn`, so generic parameters do not count.
COMPONENTS = [
    ("allocator (glibc malloc/free, Rust alloc shims)", r"^(malloc|free|realloc|calloc|cfree|_int_malloc|_int_free|_int_realloc|malloc_consolidate|unlink_chunk|tcache|__libc_malloc|__libc_free|__libc_calloc|__libc_realloc|__rust_alloc|__rust_dealloc|__rust_realloc|__rdl_|alloc::alloc|alloc::raw_vec|<alloc::raw_vec|mi_|_mi_|je_|tikv_jemalloc|sdallocx|mallocx|rallocx)"),
    ("memcpy/memmove/memset/memcmp", r"^(__memcpy|__memmove|__memset|__memcmp|memcpy|memmove|memset|memcmp|bcmp|__nss_database_lookup|__strlen)"),
    ("handover: framing sniffer", r"^handover::proxy::framing"),
    ("handover: header hygiene", r"^handover::proxy::headers"),
    ("handover: forward (request id, URI, span, hook route)", r"^handover::proxy::forward"),
    ("handover: routing / triggers (Hook::route)", r"^handover::(routing|triggers|mirror|target)"),
    ("handover: metrics", r"^(handover::metrics|prometheus_client)"),
    ("handover: upstream client wrapper", r"^handover::upstream"),
    ("handover: other", r"^handover::"),
    ("httparse (hyper's parser and the sniffer)", r"^httparse"),
    ("hyper h1 (parse, encode, dispatch, io)", r"^hyper::proto::h1"),
    ("hyper h2 / h2", r"^(hyper::proto::h2|h2::)"),
    ("hyper other (body, service, headers)", r"^hyper::"),
    ("hyper-util client + pool", r"^hyper_util::client"),
    ("hyper-util server (auto, graceful) / rt", r"^hyper_util::"),
    ("http crate (HeaderMap, Uri)", r"^http::"),
    ("bytes", r"^bytes::"),
    ("tokio scheduler / tasks / timer", r"^tokio::runtime::(scheduler|task|time|context|park|driver|blocking|coop|thread_local)"),
    ("tokio io driver + mio", r"^(tokio::runtime::io|tokio::io|tokio::net|mio::)"),
    ("tokio other (sync, util)", r"^(tokio::|tokio_util::)"),
    ("tracing", r"^(tracing|tracing_core|tracing_subscriber)"),
    ("fmt", r"^(core::fmt|alloc::fmt|<&T as core::fmt)"),
    ("hashing", r"^(core::hash|std::hash|hashbrown|<std::hash|<core::hash|siphash)"),
    ("locks / futex / atomics (std, parking)", r"^(std::sync|std::sys|std::thread|parking_lot|futex|__lll_|pthread_|syscall)"),
    ("libc syscall wrappers", r"^(__libc_|__GI_|__send|__recv|writev|readv|epoll_|__epoll|recvfrom|sendto|__write|__read|read$|write$|clock_gettime|__clock_gettime|__vdso)"),
    ("rustls / ring (TLS)", r"^(rustls|ring::|tokio_rustls|ring_core|GFp|aes_|gcm_|chacha)"),
    ("std / core other", r"^(core::|std::|alloc::)"),
    ("nginx", r"^ngx_"),
    ("openssl", r"^(SSL_|ssl|EVP_|CRYPTO_|OPENSSL_|aesni_|ossl_|BIO_)"),
]
COMPILED = [(name, re.compile(pat)) for name, pat in COMPONENTS]

# Own entry points whose inclusive cost is reported (substring of the name).
ENTRY_POINTS = [
    ("Forwarder::handle (all of handover's request handling, incl. the upstream send it awaits)", "handover::proxy::forward::Forwarder::handle"),
    ("Forwarder::clean_request_headers", "Forwarder::clean_request_headers"),
    ("headers::strip_hop_by_hop", "handover::proxy::headers::strip_hop_by_hop"),
    ("headers::set_forwarded", "handover::proxy::headers::set_forwarded"),
    ("forward::request_id", "handover::proxy::forward::request_id"),
    ("SniffedIo::poll_read (incl. the read)", "SniffedIo"),
    ("framing::Sniffer::feed", "handover::proxy::framing::Sniffer::feed"),
    ("framing::Sniffer::parse_head", "handover::proxy::framing::Sniffer::parse_head"),
    ("framing::Verdicts::next", "handover::proxy::framing::Verdicts::next"),
    ("ProxyMetrics::record_request", "ProxyMetrics::record_request"),
    ("Upstream::send", "handover::upstream::Upstream::send"),
    ("hyper_util legacy Client::send_request", "hyper_util::client::legacy::client::Client"),
    ("hyper_util legacy Pool (checkout, put, idle)", "hyper_util::client::legacy::pool"),
    ("httparse::Request::parse", "httparse::Request::parse"),
    ("hyper h1 role parse (server side)", "hyper::proto::h1::role::Server"),
    ("hyper h1 role parse (client side)", "hyper::proto::h1::role::Client"),
]


def own_path(name):
    """The path a function belongs to, without generics or the trait part."""
    n = name.strip()
    # "file:function [obj]" from callgrind_annotate
    n = re.sub(r"\s+\[[^\]]*\]$", "", n)
    if ":" in n and not n.startswith("<") and "::" not in n.split(":", 1)[0]:
        head, rest = n.split(":", 1)
        if not rest.startswith(":"):
            n = rest
    while n.startswith(("<", "&", "*", "mut ", "dyn ", "const ")):
        n = re.sub(r"^(<|&|\*|mut |dyn |const )", "", n)
    # cut at the first generic bracket or " as "
    m = re.match(r"[^<\s(]*", n)
    return m.group(0) if m else n


def classify(name):
    path = own_path(name)
    for comp, rx in COMPILED:
        if rx.search(path):
            return comp
    if re.match(r"^0x[0-9a-f]+$", path):
        return "unresolved (stripped binary: nginx, libc internals)"
    return "other"


def annotate(path, inclusive):
    out = subprocess.run(
        ["callgrind_annotate", "--auto=no", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", path],
        capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$", line)
        if not m:
            continue
        name = m.group(2)
        if name.startswith(("PROGRAM TOTALS", "Ir", "file:function", "=>", "events annotated")):
            continue
        costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def short(name, width=110):
    name = re.sub(r"\s+\[[^\]]*\]$", "", name)
    name = re.sub(r"^\?\?\?:", "", name)
    name = re.sub(r"^[^ ]*?\.(c|S|rs|h):(?!:)", "", name)
    return name if len(name) <= width else name[: width - 3] + "..."


def callgrind(small, large, requests):
    requests = float(requests)
    a, b = annotate(small, False), annotate(large, False)
    per = {k: (b.get(k, 0) - a.get(k, 0)) / requests for k in set(a) | set(b)}
    total = sum(per.values())
    comps = {}
    for name, v in per.items():
        comps[classify(name)] = comps.get(classify(name), 0) + v
    print(f"User-space instructions per request (callgrind, self cost, differenced): **{total:,.0f}**\n")
    print("| component | instructions / request | share |")
    print("|---|---:|---:|")
    for comp, v in sorted(comps.items(), key=lambda kv: -kv[1]):
        if abs(v) >= 0.5:
            print(f"| {comp} | {v:,.0f} | {100 * v / total:.1f}% |")
    print("\nTop functions (self):\n")
    print("| function | component | instr / request |")
    print("|---|---|---:|")
    for name, v in sorted(per.items(), key=lambda kv: -kv[1])[:30]:
        print(f"| `{short(name)}` | {classify(name)} | {v:,.0f} |")
    ai, bi = annotate(small, True), annotate(large, True)
    inc = {k: (bi.get(k, 0) - ai.get(k, 0)) / requests for k in set(ai) | set(bi)}
    rows = []
    for label, needle in ENTRY_POINTS:
        # the largest inclusive cost among the functions matching (inlined
        # closures and monomorphisations have separate entries)
        cands = [v for k, v in inc.items() if needle in k]
        if cands:
            rows.append((label, max(cands), len(cands)))
    if rows:
        print("\nInclusive cost of entry points (max over matching symbols; inlined code is counted in its caller):\n")
        print("| entry point | instr / request (inclusive) | symbols matched |")
        print("|---|---:|---:|")
        for label, v, n in rows:
            print(f"| {label} | {v:,.0f} | {n} |")


KERNEL = [
    ("kernel: TCP/IP, sockets, loopback", r"(tcp|ip_|ipv4|skb|sock|sk_|__sys_|net_|netif|loopback|__dev_|inet|dst_|nf_|__napi|process_backlog|__copy_skb|copy_user|copyin|copyout|_copy_to_iter|_copy_from_iter|csum|rep_movs)"),
    ("kernel: epoll", r"(ep_|epoll|eventpoll)"),
    ("kernel: scheduler, wake-ups, futex", r"(schedule|wake|ttwu|enqueue|dequeue|_raw_spin|pick_next|finish_task_switch|update_|futex|sched|select_task|try_to_wake|psi_|cpuacct|native_queued|switch_|__switch)"),
    ("kernel: syscall entry/exit", r"(entry_SYSCALL|syscall|do_syscall|__x64|exit_to_user|irqentry|fpregs|restore_fpregs|__fdget|fput|fget|__fsnotify|rw_verify|security_)"),
]
KERNEL_C = [(n, re.compile(p)) for n, p in KERNEL]


def perf(path):
    comps = {}
    total = 0.0
    for line in open(path):
        m = re.match(r"^\s*([\d.]+)%\s+\[(.)\]\s+(.*\S)", line)
        if not m:
            continue
        pct, kind, sym = float(m.group(1)), m.group(2), m.group(3)
        total += pct
        if kind == "k":
            comp = next((n for n, rx in KERNEL_C if rx.search(sym)), "kernel: other")
        else:
            comp = classify(sym)
            if comp == "other" and re.match(r"^0x[0-9a-f]+$", sym):
                comp = "unresolved user space"
        comps[comp] = comps.get(comp, 0) + pct
    print(f"CPU samples (cpu-clock, {total:.1f}% of samples attributed to symbols)\n")
    print("| component | share of the proxy's CPU |")
    print("|---|---:|")
    for comp, v in sorted(comps.items(), key=lambda kv: -kv[1]):
        if v >= 0.1:
            print(f"| {comp} | {v:.1f}% |")


if __name__ == "__main__":
    if sys.argv[1] == "callgrind":
        callgrind(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "perf":
        perf(sys.argv[2])
    else:
        sys.exit(__doc__)
