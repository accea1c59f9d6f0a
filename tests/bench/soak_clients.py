#!/usr/bin/env python3
"""tests/bench/soak_clients.py - the client side of soak.sh's fault phases.

Owns three modes, each a self-contained check that prints one summary line
(`soak_clients MODE ok ...` or `soak_clients MODE FAIL ...`) and exits 0/1:

  hold HOST PORT N SECONDS   open N connections at once, send half a request
                             on one in ten (slow clients that never finish),
                             hold them SECONDS, check none was closed by the
                             server, then close them all
  slow HOST PORT N INTERVAL  N clients each send one whole request one byte
                             per INTERVAL seconds, all at once; every reply
                             must be a well-formed action= line
  probe HOST PORT ACCOUNT K REGEX   one connection, K RCPT requests for
                             ACCOUNT (one transaction each); the actions, in
                             order, must match REGEX joined by ',' (fullmatch)

Limits: loopback only (the caller passes 127.0.0.1); uses only the standard
library; `hold` needs `ulimit -n` above N.
"""
import re
import selectors
import socket
import sys
import time


def request(account, instance, rcpt="r@example.net"):
    attrs = [
        ("request", "smtpd_access_policy"),
        ("protocol_state", "RCPT"),
        ("protocol_name", "ESMTP"),
        ("client_address", "198.51.100.9"),
        ("client_name", "mx.example.org"),
        ("helo_name", "mx.example.org"),
        ("sender", account + "@example.org"),
        ("recipient", rcpt),
        ("recipient_count", "0"),
        ("queue_id", ""),
        ("instance", instance),
        ("size", "0"),
        ("sasl_method", "plain"),
        ("sasl_username", account),
    ]
    return "".join(k + "=" + v + "\n" for k, v in attrs).encode() + b"\n"


def read_reply(sock, deadline):
    buf = b""
    while not buf.endswith(b"\n\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no reply")
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed by the server")
        buf += chunk
    text = buf.decode(errors="replace")
    if not re.fullmatch(r"action=[^\n]+\n\n", text):
        raise ValueError("malformed reply %r" % text)
    return text[len("action="):-2]


def mode_hold(host, port, n, seconds):
    t0 = time.monotonic()
    socks = []
    sel = selectors.DefaultSelector()
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((host, port))
        socks.append(s)
    half = 0
    pending = set(range(n))
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        done = []
        for i in pending:
            err = socks[i].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                print("soak_clients hold FAIL connect %d: errno %d" % (i, err))
                return 1
            try:
                socks[i].getpeername()
                done.append(i)
            except OSError:
                pass
        pending.difference_update(done)
        if pending:
            time.sleep(0.05)
    if pending:
        print("soak_clients hold FAIL %d connections not established" % len(pending))
        return 1
    opened = time.monotonic() - t0
    for i, s in enumerate(socks):
        if i % 10 == 0:
            r = request("hold%d" % i, "hold.%d" % i)
            s.send(r[: len(r) // 2])
            half += 1
        sel.register(s, selectors.EVENT_READ, i)
    closed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=max(0.0, min(1.0, end - time.monotonic()))):
            try:
                data = key.fileobj.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed += 1
            sel.unregister(key.fileobj)
    for s in socks:
        s.close()
    if closed:
        print("soak_clients hold FAIL %d of %d connections closed by the server" % (closed, n))
        return 1
    print("soak_clients hold ok connections=%d half_requests=%d opened_in_s=%.2f held_s=%d"
          % (n, half, opened, seconds))
    return 0


def mode_slow(host, port, n, interval):
    socks, reqs = [], []
    for i in range(n):
        s = socket.create_connection((host, port), timeout=5)
        socks.append(s)
        reqs.append(request("slow%d" % i, "slow.%d.%d" % (i, int(time.time()))))
    t0 = time.monotonic()
    longest = max(len(r) for r in reqs)
    for b in range(longest):
        for s, r in zip(socks, reqs):
            if b < len(r):
                s.send(r[b : b + 1])
        time.sleep(interval)
    bad = 0
    for i, s in enumerate(socks):
        try:
            read_reply(s, time.monotonic() + 10)
        except Exception as e:  # noqa: BLE001 - reported, counted
            print("soak_clients slow client %d: %s" % (i, e))
            bad += 1
        s.close()
    took = time.monotonic() - t0
    if bad:
        print("soak_clients slow FAIL %d of %d clients" % (bad, n))
        return 1
    print("soak_clients slow ok clients=%d bytes=%d seconds=%.1f" % (n, longest, took))
    return 0


def mode_probe(host, port, account, k, pattern):
    s = socket.create_connection((host, port), timeout=5)
    got = []
    for i in range(k):
        s.sendall(request(account, "probe.%s.%d" % (account, i), "p%d@example.net" % i))
        got.append(read_reply(s, time.monotonic() + 10))
    s.close()
    joined = ",".join(got)
    if not re.fullmatch(pattern, joined):
        print("soak_clients probe FAIL %s: %r" % (account, joined))
        return 1
    print("soak_clients probe ok %s: %s" % (account, joined))
    return 0


def main(argv):
    if len(argv) >= 5 and argv[0] == "hold":
        return mode_hold(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
    if len(argv) >= 5 and argv[0] == "slow":
        return mode_slow(argv[1], int(argv[2]), int(argv[3]), float(argv[4]))
    if len(argv) >= 6 and argv[0] == "probe":
        return mode_probe(argv[1], int(argv[2]), argv[3], int(argv[4]), argv[5])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
