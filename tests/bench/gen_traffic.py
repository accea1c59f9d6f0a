#!/usr/bin/env python3
"""tests/bench/gen_traffic.py - realistic outbound submission traffic with
injected account compromises, for evaluating policyd's anomaly score
(tests/bench/eval_anomaly.sh).

Writes, deterministically from --seed:
  REQUESTS  Postfix policy requests (RCPT, optionally END-OF-MESSAGE), blank-line
            separated, each with timestamp=<unix seconds>, in time order
            (policyd --replay FILE).
  FIXTURE   DNS answers for the replay (--dns-fixture): ASN/country TXT records
            for every /24 of the simulated Internet (origin.asn.cymru.com style)
            and the client DNSBL listings (127.0.0.4 = exploit list).
  LABELS    one line per request, tab-separated: account id, compromise id
            (-1 = the owner's own mail), attacker message number.
  ACCOUNTS  JSON: every account (type, overlays, networks) and every compromise.
  MAILLOG   (--maillog, optional) Postfix's log of the same month: for each
            message the submission smtpd's client= line with the login, one
            smtp delivery line per recipient 1-20 s later (status=sent, or
            status=bounced 550 5.1.1 user unknown) and qmgr's removed; in time
            order, RFC 3339 UTC stamps (policyd --replay --maillog).  Bounce
            model (an assumption, not a measurement): the owner's mail to a
            known contact bounces 0.3 %, to a new address 3 % (typos, stale
            addresses); an attacker's mail to harvested addresses bounces
            10-40 % (one rate per compromise), to the owner's contacts
            (lateral) as the owner's.

The world (all simulated, private address space 10.0.0.0/8 and private
ASNs): home countries with broadband, mobile (CGNAT, shared and often
exploit-listed addresses) and business ISPs; travel destinations; hosting
ASNs used by attackers, VPN exits and newsletter servers alike.

Accounts (their mix is a parameter of the model, see ACCOUNT_MIX):
  quiet       2-8 messages a workday, 1-2 recipients, a small circle of contacts
  active      15-50 messages a day, larger circles, team lists
  support     40-150 replies a day, mostly to people never mailed before,
              bursty days, an incident day at 3x
  newsletter  1-3 campaigns a week, 100-1500 subscribers in Bcc batches of 50,
              from a server in a hosting ASN
  notifier    automated notifications around the clock, mostly new recipients
Overlays: travellers (trips abroad: hotel networks, foreign mobile, roaming,
shifted hours, conference contacts), aliases/shared mailboxes (2-3 senders),
VPN users (exits in hosting ASNs), event senders (one invitation burst of
40-150 new recipients), accounts created during the month (cold start),
bare logins (no domain in the login name).

Compromises, injected into random accounts at random times after day 7:
  burst    a spam run: 200-2000 recipients/h to new addresses, 1-50 per message,
           from attacker infrastructure (15 %: the owner's own infected machine)
  drip     2-8 messages/h, 1-3 recipients, from a new ASN abroad; half of them
           lateral (to the owner's own contacts)
  forgery  5-40 messages/h with a forged envelope sender, new recipients
Each runs for --attack-messages messages while the owner keeps working.
"""
import argparse
import heapq
import json
import math
import random
import sys
import time

DAY = 86400
HOUR = 3600

HOME = ["DE", "NL", "FR", "GB", "US"]
TZ = {"DE": 1, "NL": 1, "FR": 1, "GB": 0, "US": -5, "ES": 1, "IT": 1, "JP": 9, "SG": 8,
      "AE": 4, "TH": 7, "BR": -3, "RU": 3, "UA": 2, "VN": 7, "NG": 1, "CN": 8, "IN": 5,
      "ID": 7, "PK": 5}
TRAVEL = ["ES", "IT", "US", "GB", "FR", "JP", "SG", "AE", "TH", "BR", "DE", "NL"]
HOSTING = ["US", "NL", "DE", "FR", "SG", "RU", "UA", "VN", "BR", "NG", "CN", "IN", "GB"]
ATTACK_RESIDENTIAL = ["NG", "VN", "IN", "BR", "RU", "CN", "ID", "PK", "UA"]
WEBMAIL = ["gmail.example", "outlook.example", "yahoo.example", "gmx.example",
           "web.example", "orange.example", "icloud.example", "mail.example"]
ACCOUNT_MIX = [("quiet", 0.52), ("active", 0.22), ("support", 0.05),
               ("newsletter", 0.03), ("notifier", 0.02)]


class World:
    """ASNs, their /16s, and who is listed."""

    def __init__(self, rnd):
        self.rnd = rnd
        self.asns = []          # dicts: asn, cc, kind, net (second octet)
        self.by = {}            # (cc, kind) -> [asn dicts]
        self.listed = {}        # "a.b.c.d" -> code
        n = 0

        def add(cc, kind, count):
            nonlocal n
            for _ in range(count):
                n += 1
                a = {"asn": 64600 + n, "cc": cc, "kind": kind, "net": n}
                self.asns.append(a)
                self.by.setdefault((cc, kind), []).append(a)

        for cc in HOME:
            add(cc, "broadband", 3)
            add(cc, "mobile", 2)
            add(cc, "business", 2)
        for cc in TRAVEL:
            if (cc, "broadband") not in self.by:
                add(cc, "broadband", 2)
                add(cc, "mobile", 1)
            add(cc, "hotel", 1)
        for cc in HOSTING:
            add(cc, "hosting", 1)
        for cc in ATTACK_RESIDENTIAL:
            add(cc, "residential", 1)
        assert n < 250
        # mobile CGNAT: a few /24s per carrier, shared by everyone on it;
        # many CGNAT addresses sit on exploit lists (infected phones behind them)
        self.cgnat = {}
        for a in self.asns:
            if a["kind"] == "mobile":
                pool = ["10.%d.%d.%d" % (a["net"], 200 + i, rnd.randrange(1, 255))
                        for i in range(6) for _ in range(8)]
                self.cgnat[a["asn"]] = pool
                for ip in pool:
                    if rnd.random() < 0.05:
                        self.listed[ip] = "127.0.0.4"
        # attacker infrastructure: hosting and residential proxies, often listed
        self.attack_ips = []
        for a in self.asns:
            if a["kind"] in ("hosting", "residential"):
                for _ in range(6):
                    ip = "10.%d.%d.%d" % (a["net"], rnd.randrange(0, 200), rnd.randrange(1, 255))
                    self.attack_ips.append((ip, a))
                    if rnd.random() < 0.3:
                        self.listed[ip] = "127.0.0.4"

    def pick(self, cc, kind):
        lst = self.by.get((cc, kind))
        if not lst:
            lst = [a for a in self.asns if a["kind"] == kind]
        return self.rnd.choice(lst)

    def host_in(self, a, third=None):
        third = self.rnd.randrange(0, 200) if third is None else third
        return "10.%d.%d.%d" % (a["net"], third, self.rnd.randrange(1, 255))

    def write_fixture(self, f, asn_zone, dnsbl_zone):
        for a in self.asns:
            for third in range(256):
                f.write('0.%d.%d.10.%s TXT "%d | 10.%d.0.0/16 | %s | ripencc | 2009-01-01" 86400\n'
                        % (third, a["net"], asn_zone, a["asn"], a["net"], a["cc"]))
        for ip, code in sorted(self.listed.items()):
            o = ip.split(".")
            f.write("%s.%s.%s.%s.%s A %s 900\n" % (o[3], o[2], o[1], o[0], dnsbl_zone, code))


class Account:
    pass


def zipf_pick(rnd, n, s=1.1):
    # inverse-CDF sampling of a truncated Zipf over 0..n-1 (approximate, fast)
    u = rnd.random()
    if s == 1.0:
        return min(n - 1, int(math.exp(u * math.log(n + 1))) - 1)
    a = 1 - s
    x = ((n + 1) ** a - 1) * u + 1
    return min(n - 1, max(0, int(x ** (1 / a)) - 1))


class Gen:
    def __init__(self, args):
        self.a = args
        self.rnd = random.Random(args.seed)
        self.world = World(self.rnd)
        self.t0 = args.start - args.start % (7 * DAY) + 4 * DAY  # a Monday 00:00 UTC
        self.inst = 0
        self.accounts = []
        self.orgs = []
        self.compromises = []
        self.make_orgs()
        self.make_accounts()
        self.make_compromises()

    # ------------------------------------------------------------ setup
    def make_orgs(self):
        r = self.rnd
        for i in range(max(10, self.a.accounts // 10)):
            cc = r.choice(HOME)
            biz = self.world.pick(cc, "business")
            self.orgs.append({"domain": "org%d.example" % i, "cc": cc,
                              "office": self.world.host_in(biz), "office_asn": biz,
                              "alias": "org%d-group.example" % i})

    def contacts_for(self, acc, n):
        r = self.rnd
        out = []
        for _ in range(n):
            out.append(self.new_address(acc))
        return out

    def new_address(self, acc):
        r = self.rnd
        u = r.random()
        if acc.org and u < 0.3:
            d = acc.org["domain"]
        elif u < 0.75:
            d = r.choice(WEBMAIL)
        else:
            d = "partner%d.example" % r.randrange(0, 5000)
        return "c%07d@%s" % (r.randrange(0, 10 ** 7), d)

    def make_accounts(self):
        r = self.rnd
        kinds = [k for k, _ in ACCOUNT_MIX]
        weights = [w for _, w in ACCOUNT_MIX]
        for i in range(self.a.accounts):
            acc = Account()
            acc.id = i
            acc.kind = r.choices(kinds, weights)[0]
            acc.org = r.choice(self.orgs) if (acc.kind != "quiet" or r.random() < 0.6) else None
            acc.cc = acc.org["cc"] if acc.org else r.choice(HOME)
            dom = acc.org["domain"] if acc.org else "isp-mail.example"
            acc.address = "u%05d@%s" % (i, dom)
            acc.bare = acc.kind in ("quiet", "active") and r.random() < 0.15
            acc.login = "u%05d" % i if acc.bare else acc.address
            acc.senders = [acc.address]
            acc.alias = acc.kind in ("quiet", "active", "support") and r.random() < 0.10
            if acc.alias:
                extra = ["team%d@%s" % (r.randrange(100), dom)]
                if acc.org and r.random() < 0.5:
                    extra.append("u%05d@%s" % (i, acc.org["alias"]))
                acc.senders += extra
            acc.traveller = acc.kind in ("quiet", "active") and r.random() < 0.12
            acc.vpn = acc.kind in ("quiet", "active") and r.random() < 0.04
            acc.event_day = (r.randrange(3, self.a.days)
                             if acc.kind in ("quiet", "active") and r.random() < 0.05 else None)
            acc.created = (r.randrange(3, self.a.days - 3)
                           if r.random() < 0.02 else 0)
            home_asn = self.world.pick(acc.cc, "broadband")
            acc.home_asn = home_asn
            acc.home_ip = self.world.host_in(home_asn)
            if r.random() < 0.003:
                self.world.listed[acc.home_ip] = "127.0.0.4"  # stale listing of a dynamic IP
            acc.mobile_asn = self.world.pick(acc.cc, "mobile")
            if acc.kind in ("newsletter", "notifier"):
                srv = self.world.pick(acc.cc if r.random() < 0.7 else r.choice(HOSTING), "hosting")
                acc.server_ip = self.world.host_in(srv)
                acc.senders = ["%s@%s" % ("news" if acc.kind == "newsletter" else "noreply", dom)]
                acc.login = acc.senders[0]
            if acc.kind == "quiet":
                acc.rate = r.uniform(2, 8)
                acc.ncontacts = r.randint(15, 120)
                acc.pnew = r.uniform(0.05, 0.2)
            elif acc.kind == "active":
                acc.rate = r.uniform(15, 50)
                acc.ncontacts = r.randint(100, 600)
                acc.pnew = r.uniform(0.1, 0.3)
            elif acc.kind == "support":
                acc.rate = r.uniform(40, 150)
                acc.ncontacts = 200
                acc.pnew = r.uniform(0.7, 0.9)
                acc.incident = r.randrange(0, self.a.days)
            elif acc.kind == "newsletter":
                acc.rate = 0
                acc.ncontacts = r.randint(100, 1500)
                acc.pnew = 0.01
                acc.campaign_days = set()
                per_week = r.randint(1, 3)
                for w in range(0, self.a.days, 7):
                    for d in r.sample(range(5), per_week):
                        acc.campaign_days.add(w + d)
                acc.campaign_hour = r.randint(6, 16)
            else:  # notifier
                acc.rate = r.uniform(20, 200)
                acc.ncontacts = 300
                acc.pnew = r.uniform(0.6, 0.95)
            acc.contacts = self.contacts_for(acc, acc.ncontacts)
            acc.trips = []
            if acc.traveller:
                for _ in range(r.randint(1, 2)):
                    start = r.randrange(1, self.a.days - 2)
                    dest = r.choice([c for c in TRAVEL if c != acc.cc])
                    acc.trips.append((start, start + r.randint(3, 8), dest))
            acc.session = {}
            acc.compromise = None
            self.accounts.append(acc)

    def make_compromises(self):
        r = self.rnd
        eligible = [a for a in self.accounts if a.kind != "notifier" and a.created == 0]
        victims = r.sample(eligible, min(self.a.compromises, len(eligible)))
        for n, acc in enumerate(victims):
            kind = r.choices(["burst", "drip", "forgery"], [0.4, 0.35, 0.25])[0]
            start = self.t0 + r.randrange(7 * DAY, (self.a.days - 3) * DAY)
            own = kind == "burst" and r.random() < 0.15
            if own:
                ip, asn = acc.home_ip, acc.home_asn
                if r.random() < 0.6:
                    self.world.listed[ip] = "127.0.0.4"
            else:
                ip, asn = r.choice(self.world.attack_ips)
            c = {"id": n, "account": acc.id, "kind": kind, "start": start, "ip": ip,
                 "asn": asn["asn"], "cc": asn["cc"], "own_machine": own,
                 "listed": ip in self.world.listed, "sent": 0,
                 "lateral": kind == "drip" and r.random() < 0.5,
                 "forged": kind == "forgery" or (kind == "burst" and r.random() < 0.15)}
            if kind == "burst":
                c["rate"] = r.uniform(200, 2000)  # recipients/h
            elif kind == "drip":
                c["rate"] = r.uniform(2, 8)       # messages/h
            else:
                c["rate"] = r.uniform(5, 40)      # messages/h
            c["sender"] = (r.choice(["security", "billing", "support", "no-reply"]) + "@" +
                           r.choice(["paypa1-verify.example", "bank-secure.example",
                                     "dhl-parcel.example", acc.address.split("@")[1].replace(".example", "-mail.example")])
                           if c["forged"] else acc.senders[0])
            acc.compromise = c
            self.compromises.append(c)

    # ------------------------------------------------------------ helpers
    def instance(self):
        self.inst += 1
        return "%X.%X.%X.0" % (self.inst & 0xfffff, (self.inst * 2654435761) & 0xffff, self.inst >> 20)

    def local_hour(self, t, cc):
        return ((t // HOUR) + TZ[cc]) % 24

    def where(self, acc, t):
        """(country, client ip) of the owner at time t."""
        r = self.rnd
        day = (t - self.t0) // DAY
        for (s, e, dest) in acc.trips:
            if s <= day < e:
                sess = acc.session.get("trip")
                if sess is None or sess[0] != (s, day // 2):
                    u = r.random()
                    if u < 0.45:      # roaming: the home carrier's network
                        ip = r.choice(self.world.cgnat[acc.mobile_asn["asn"]])
                    elif u < 0.85:    # a hotel
                        ip = self.world.host_in(self.world.pick(dest, "hotel"))
                    else:             # a local mobile SIM
                        m = self.world.pick(dest, "mobile")
                        ip = r.choice(self.world.cgnat.get(m["asn"], [self.world.host_in(m)]))
                    sess = ((s, day // 2), ip)
                    acc.session["trip"] = sess
                return dest, sess[1]
        if acc.kind in ("newsletter", "notifier"):
            return acc.cc, acc.server_ip
        lh = self.local_hour(t, acc.cc)
        weekday = ((t - self.t0) // DAY) % 7 < 5
        if acc.vpn and r.random() < 0.15:
            sess = acc.session.get("vpn")
            if sess is None or t - sess[0] > 4 * HOUR:
                a = self.world.pick(r.choice(["NL", "US", "DE", "SG", "GB"]), "hosting")
                sess = (t, self.world.host_in(a))
                acc.session["vpn"] = sess
            return acc.cc, sess[1]
        u = r.random()
        if acc.org and weekday and 8 <= lh < 18 and u < 0.8:
            return acc.cc, acc.org["office"]
        if u < 0.82 or acc.kind == "support":
            # home broadband; the address moves within the ISP now and then
            if r.random() < 0.004:
                acc.home_ip = self.world.host_in(acc.home_asn)
            return acc.cc, acc.home_ip
        sess = acc.session.get("mobile")
        if sess is None or t - sess[0] > 2 * HOUR:
            sess = (t, r.choice(self.world.cgnat[acc.mobile_asn["asn"]]))
            acc.session["mobile"] = sess
        return acc.cc, sess[1]

    def pick_rcpts(self, acc, n, pnew):
        r = self.rnd
        out = []
        for _ in range(n):
            if r.random() < pnew:
                a = self.new_address(acc)
                if r.random() < 0.5:
                    acc.contacts.append(a)
                out.append(a)
            else:
                out.append(acc.contacts[zipf_pick(r, len(acc.contacts))])
        return out

    # ------------------------------------------------------------ a day
    def day_events(self, day):
        """(t, account, cid, msgno, sender, ip, [rcpts]) for every message of the day."""
        r = self.rnd
        ev = []
        dstart = self.t0 + day * DAY
        weekday = day % 7 < 5
        for acc in self.accounts:
            if day < acc.created:
                continue
            k = acc.kind
            if k == "newsletter":
                if day in acc.campaign_days:
                    t = dstart + (acc.campaign_hour - TZ[acc.cc]) * HOUR + r.randrange(0, 1800)
                    subs = acc.contacts
                    for _ in range(max(1, len(subs) // 100)):    # list growth and churn
                        subs.append(self.new_address(acc))
                    if len(subs) > 50 and r.random() < 0.5:
                        subs.pop(r.randrange(len(subs)))
                    speed = r.uniform(1000, 3000) / HOUR        # recipients per second
                    for i in range(0, len(subs), 50):
                        batch = subs[i:i + 50]
                        ev.append((t, acc, -1, 0, acc.senders[0], acc.server_ip, batch))
                        t += len(batch) / speed
                continue
            if k == "notifier":
                n = self.poisson(acc.rate * (0.7 if not weekday else 1.0))
                for _ in range(n):
                    t = dstart + r.randrange(0, DAY)
                    ev.append((t, acc, -1, 0, acc.senders[0], acc.server_ip,
                               self.pick_rcpts(acc, 1, acc.pnew)))
                continue
            rate = acc.rate
            if not weekday:
                rate *= 0.15 if k != "support" else 0.3
            if k == "support":
                rate *= r.uniform(0.5, 1.8)
                if day == acc.incident:
                    rate *= 3
            n = self.poisson(rate)
            cc_now = acc.cc
            for (s, e, dest) in acc.trips:
                if s <= day < e:
                    cc_now = dest
                    n = self.poisson(rate * 0.6)
            for _ in range(n):
                # local working hours, some evenings
                if r.random() < 0.85:
                    lh = r.gauss(12.5, 2.6)
                else:
                    lh = r.uniform(18, 23.5)
                lh = min(23.9, max(6.0, lh))
                t = dstart + int((lh - TZ[cc_now]) * HOUR) + r.randrange(0, 60)
                if k == "support":
                    nr = 1
                elif k == "active":
                    nr = r.choices([1, 2, 3, 5, 10], [0.55, 0.2, 0.12, 0.08, 0.05])[0]
                else:
                    nr = r.choices([1, 2, 3, 4, 6], [0.7, 0.18, 0.07, 0.03, 0.02])[0]
                pnew = acc.pnew * (1.6 if cc_now != acc.cc else 1.0)
                sender = acc.senders[0] if len(acc.senders) == 1 or r.random() < 0.7 \
                    else r.choice(acc.senders[1:])
                ev.append((t, acc, -1, 0, sender, None, self.pick_rcpts(acc, nr, min(0.95, pnew))))
            if acc.event_day == day:
                t = dstart + (r.randint(9, 15) - TZ[acc.cc]) * HOUR
                total = r.randint(40, 150)
                single = r.random() < 0.5
                sent = 0
                while sent < total:
                    b = 1 if single else min(total - sent, r.randint(10, 50))
                    ev.append((t, acc, -1, 0, acc.senders[0], None, self.pick_rcpts(acc, b, 0.97)))
                    sent += b
                    t += r.uniform(20, 90) if single else r.uniform(60, 300)
        # compromises
        for c in self.compromises:
            acc = self.accounts[c["account"]]
            dend = dstart + DAY
            if c["start"] >= dend or c["sent"] >= self.a.attack_messages:
                continue
            t = max(c["start"], dstart) if "t" not in c else max(c["t"], dstart)
            while t < dend and c["sent"] < self.a.attack_messages:
                if c["kind"] == "burst":
                    nr = r.randint(1, 50)
                    gap = nr / (c["rate"] / HOUR)
                elif c["kind"] == "drip":
                    nr = r.randint(1, 3)
                    gap = r.expovariate(c["rate"] / HOUR)
                    # attackers work their own day: pause at their night
                    if self.local_hour(int(t), c["cc"]) < 7:
                        t += (7 - self.local_hour(int(t), c["cc"])) * HOUR
                        continue
                else:
                    nr = r.randint(1, 5)
                    gap = r.expovariate(c["rate"] / HOUR)
                if c["lateral"]:
                    rc = [acc.contacts[zipf_pick(r, len(acc.contacts))] for _ in range(nr)]
                else:
                    rc = ["v%08d@%s" % (r.randrange(10 ** 8), r.choice(WEBMAIL + ["corp%d.example" % r.randrange(900)]))
                          for _ in range(nr)]
                c["sent"] += 1
                ev.append((t, acc, c["id"], c["sent"], c["sender"], c["ip"], rc))
                if c["sent"] == 1:
                    c["first"] = t
                c["last"] = t
                t += max(gap, 1.0)
            c["t"] = t
        ev.sort(key=lambda e: e[0])
        return ev

    def poisson(self, lam):
        r = self.rnd
        if lam <= 0:
            return 0
        if lam > 30:
            return max(0, int(round(r.gauss(lam, math.sqrt(lam)))))
        l, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= r.random()
            if p <= l:
                return k
            k += 1

    # ------------------------------------------------------------ output
    def log_message(self, loglines, t, acc, cid, ip, rcpts):
        """Postfix's log lines of one message (see MAILLOG above)."""
        r = self.logrnd
        self.qid += 1
        qid = "%011X" % self.qid
        loglines.append((t + 0.5, "%s: client=mua[%s], sasl_method=PLAIN, sasl_username=%s"
                         % (qid, ip, acc.login), "submission/smtpd[1000]"))
        c = self.compromises[cid] if cid >= 0 else None
        last = t + 0.5
        for rc in rcpts:
            if c is not None and not c["lateral"]:
                p = c["bounce"]
            else:
                p = 0.003 if rc in acc.known else 0.03
            d = t + r.uniform(1, 20)
            last = max(last, d)
            dom = rc.split("@")[1]
            if r.random() < p:
                st = ("dsn=5.1.1, status=bounced (host mx.%s[192.0.2.1] said: 550 5.1.1 <%s>: "
                      "Recipient address rejected: User unknown (in reply to RCPT TO command))"
                      % (dom, rc))
            else:
                st = "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 1A2B3C)"
            loglines.append((d, "%s: to=<%s>, relay=mx.%s[192.0.2.1]:25, delay=1, "
                             "delays=0/0/0.5/0.5, %s" % (qid, rc, dom, st), "smtp[1001]"))
            if c is None:
                acc.known.add(rc)
        loglines.append((last + 0.1, "%s: removed" % qid, "qmgr[1002]"))

    def write_log(self, f, loglines):
        loglines.sort(key=lambda x: x[0])
        for (t, text, prog) in loglines:
            ti = int(t)
            f.write("%s.%06dZ mx1 postfix/%s: %s\n"
                    % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ti)),
                       int((t - ti) * 1e6), prog, text))

    def run(self, out, labels, maillog=None):
        eom = self.a.eom
        nreq = 0
        # the log has its own random stream: the requests are the same with
        # or without it
        self.logrnd = random.Random(self.a.seed * 7919 + 1)
        self.qid = 0
        for c in self.compromises:
            c["bounce"] = self.logrnd.uniform(0.1, 0.4)
        for acc in self.accounts:
            acc.known = set(acc.contacts)
        for day in range(self.a.days):
            loglines = []
            for (t, acc, cid, msgno, sender, ip, rcpts) in self.day_events(day):
                if ip is None:
                    _, ip = self.where(acc, int(t))
                if maillog is not None:
                    self.log_message(loglines, t, acc, cid, ip, rcpts)
                inst = self.instance()
                login = acc.login
                for i, rc in enumerate(rcpts):
                    out.write("request=smtpd_access_policy\nprotocol_state=RCPT\n"
                              "sasl_method=PLAIN\nsasl_username=%s\nsender=%s\nrecipient=%s\n"
                              "client_address=%s\ninstance=%s\ntimestamp=%.3f\n\n"
                              % (login, sender, rc, ip, inst, t + i * 0.01))
                    labels.write("%d\t%d\t%d\n" % (acc.id, cid, msgno))
                    nreq += 1
                if eom:
                    out.write("request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\n"
                              "sasl_method=PLAIN\nsasl_username=%s\nsender=%s\nrecipient=\n"
                              "recipient_count=%d\nclient_address=%s\ninstance=%s\n"
                              "size=%d\ntimestamp=%.3f\n\n"
                              % (login, sender, len(rcpts), ip, inst,
                                 self.rnd.randint(2000, 90000), t + len(rcpts) * 0.01 + 0.5))
                    labels.write("%d\t%d\t%d\n" % (acc.id, cid, msgno))
                    nreq += 1
            if maillog is not None:
                self.write_log(maillog, loglines)
        return nreq

    def describe(self):
        accs = []
        for a in self.accounts:
            accs.append({"id": a.id, "login": a.login, "kind": a.kind, "traveller": a.traveller,
                         "vpn": a.vpn, "alias": a.alias, "bare_login": a.bare,
                         "event_day": a.event_day, "created_day": a.created,
                         "trips": a.trips, "compromise": a.compromise["id"] if a.compromise else None})
        comps = []
        for c in self.compromises:
            comps.append({k: c[k] for k in ("id", "account", "kind", "start", "ip", "asn", "cc",
                                             "own_machine", "listed", "lateral", "forged", "rate",
                                             "sender", "sent")} |
                         {"first": c.get("first"), "last": c.get("last")})
        return {"t0": self.t0, "days": self.a.days, "accounts": accs, "compromises": comps}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--accounts", type=int, default=3000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--compromises", type=int, default=200)
    p.add_argument("--attack-messages", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--start", type=int, default=1790000000)
    p.add_argument("--eom", action="store_true", help="END-OF-MESSAGE requests too")
    p.add_argument("--asn-zone", default="origin.asn.cymru.com")
    p.add_argument("--dnsbl-zone", default="zen.spamhaus.org")
    p.add_argument("--requests", default="-", help="output (default: stdout)")
    p.add_argument("--fixture", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--accounts-json", required=True)
    p.add_argument("--maillog", help="write Postfix's log of the month too (bounces)")
    a = p.parse_args()
    if a.days < 11:
        p.error("--days: at least 11 (compromises start after day 7)")
    g = Gen(a)
    with open(a.fixture, "w") as f:
        g.world.write_fixture(f, a.asn_zone, a.dnsbl_zone)
    out = sys.stdout if a.requests == "-" else open(a.requests, "w")
    ml = open(a.maillog, "w") if a.maillog else None
    with open(a.labels, "w") as lab:
        n = g.run(out, lab, ml)
    if ml:
        ml.close()
    if out is not sys.stdout:
        out.close()
    else:
        out.flush()
    with open(a.accounts_json, "w") as f:
        json.dump(g.describe(), f)
    print("gen_traffic: %d accounts, %d compromises, %d requests" %
          (len(g.accounts), len(g.compromises), n), file=sys.stderr)


if __name__ == "__main__":
    main()
