#!/bin/sh
# tests/bench/eval_anomaly.sh - evaluate policyd's anomaly score on generated
# traffic: gen_traffic.py writes a month of submissions with injected
# compromises; policyd --replay scores them with the [anomaly] section of
# contrib/postfix/policyd.conf as it stands; this script reports precision,
# recall, messages until flag, false flags of normal accounts and the worst
# false positives with their components (Markdown on standard output).
#
# usage: tests/bench/eval_anomaly.sh [--build DIR] [--accounts N] [--days D]
#            [--compromises K] [--seed S] [--keep DIR] [--config FILE]
#            [--reuse DIR] [--maillog]
#
# Needs python3 (standard library only) and a built policyd (default
# BUILD=build-anom at the top of the tree).  Nothing is left behind unless
# --keep DIR is given (the requests, labels, fixture and replay output).
# --reuse DIR replays the traffic kept in DIR by an earlier --keep run
# (tuning: the same month, scored again).  --maillog: gen_traffic.py also
# writes Postfix's log of the month (its bounce model) and the replay feeds
# it through an [ndr] section (data/ndr-patterns.conf), so that bounces
# reach the profiles; the requests are the same as without it.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=$top/build-anom
accounts=3000
days=30
compromises=200
seed=1
keep=
reuse=
config=$top/contrib/postfix/policyd.conf
maillog=
while [ $# -gt 0 ]; do
	case $1 in
	--build) build=$2; shift 2 ;;
	--accounts) accounts=$2; shift 2 ;;
	--days) days=$2; shift 2 ;;
	--compromises) compromises=$2; shift 2 ;;
	--seed) seed=$2; shift 2 ;;
	--keep) keep=$2; shift 2 ;;
	--reuse) reuse=$2; shift 2 ;;
	--config) config=$2; shift 2 ;;
	--maillog) maillog=1; shift ;;
	-h|--help) sed -n '2,21p' "$0"; exit 0 ;;
	*) echo "eval_anomaly: unknown option $1" >&2; exit 2 ;;
	esac
done
case $build in /*) ;; *) build=$top/$build ;; esac
policyd=$build/policyd/policyd
[ -x "$policyd" ] || { echo "eval_anomaly: no $policyd (ninja -C $build policyd/policyd)" >&2; exit 1; }

if [ -n "$reuse" ]; then
	dir=$(cd "$reuse" && pwd)
	[ -s "$dir/requests.txt" ] || { echo "eval_anomaly: no $dir/requests.txt" >&2; exit 1; }
elif [ -n "$keep" ]; then
	mkdir -p "$keep"
	dir=$(cd "$keep" && pwd)
else
	dir=$(mktemp -d /tmp/policyd-eval.XXXXXX)
	trap 'rm -rf "$dir"' EXIT INT TERM
fi

# The replay config: a [server] for replay, then the [anomaly] section of the
# example as it stands (limits are left out: this measures the score alone).
{
	printf '[server]\nlisten = inet:127.0.0.1:10031\nstate_dir =\nlog = stderr\nhooks = rcpt\n\n'
	[ -z "$maillog" ] || printf '[ndr]\npatterns = %s\nlocal_domains = local.test\nqueue_check_interval = 0\n\n' \
		"$top/data/ndr-patterns.conf"
	awk '/^\[/ { p = ($0 == "[anomaly]") } p' "$config"
} > "$dir/eval.conf"
logopt=
if [ -n "$maillog" ]; then
	[ -z "$reuse" ] || [ -s "$dir/maillog.txt" ] ||
		{ echo "eval_anomaly: no $dir/maillog.txt (kept without --maillog)" >&2; exit 1; }
	logopt="--maillog $dir/maillog.txt"
fi
grep -q '^\[anomaly\]' "$dir/eval.conf" || { echo "eval_anomaly: no [anomaly] in $config" >&2; exit 1; }
asn_zone=$(awk -F' *= *' '/^asn_zone *=/ { print $2 }' "$dir/eval.conf")
dnsbl_zone=$(awk -F' *= *' '/^dnsbl *=/ { split($2, a, "[=, ]"); print a[1] }' "$dir/eval.conf")

t0=$(date +%s)
[ -n "$reuse" ] || python3 "$here/gen_traffic.py" --accounts "$accounts" --days "$days" \
	--compromises "$compromises" --seed "$seed" \
	--asn-zone "${asn_zone:-origin.asn.cymru.com}" --dnsbl-zone "${dnsbl_zone:-zen.spamhaus.org}" \
	--fixture "$dir/fixture.txt" --labels "$dir/labels.tsv" --accounts-json "$dir/accounts.json" \
	--requests "$dir/requests.txt" $logopt 2> "$dir/gen.log"
t1=$(date +%s)
"$policyd" --replay "$dir/requests.txt" --dns-fixture "$dir/fixture.txt" $logopt -c "$dir/eval.conf" \
	> "$dir/replay.jsonl" 2> "$dir/replay.log"
t2=$(date +%s)

python3 - "$dir" "$seed" "$((t1 - t0))" "$((t2 - t1))" <<'EOF'
import collections, json, sys

d, seed, tgen, trep = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
meta = json.load(open(d + "/accounts.json"))
accs = {a["id"]: a for a in meta["accounts"]}
comps = {c["id"]: c for c in meta["compromises"]}
by_login = {a["login"]: a for a in meta["accounts"]}
replay_log = open(d + "/replay.log").read().strip().splitlines()

first_flag = {}        # account -> (t, components, line)
flags = []             # (account, t, components)
attack_msgs = collections.defaultdict(list)   # compromise -> [(t, msgno)]
holds = collections.Counter()                 # normal requests held / warned / deferred
normal_req = 0
hold_accounts = set()
bounce_comp = set()    # accounts whose own requests had a bounce component
n = 0
with open(d + "/replay.jsonl") as rp, open(d + "/labels.tsv") as lb:
    for line, lab in zip(rp, lb):
        n += 1
        acc, cid, msgno = (int(x) for x in lab.split("\t"))
        r = json.loads(line)
        t = r.get("timestamp")
        if cid >= 0:
            attack_msgs[cid].append((t, msgno))
        else:
            normal_req += 1
            if r.get("rule") == "anomaly" or (r.get("score") or 0) >= 40:
                s = r.get("score") or 0
                holds["warn" if s < 70 else "hold" if s < 95 else "defer"] += 1
                if s >= 70:
                    hold_accounts.add(acc)
        if cid < 0 and any(c.startswith("bounce ratio") for c in (r.get("components") or [])):
            bounce_comp.add(acc)
        if r.get("flagged"):
            flags.append((acc, t, r.get("components"), r.get("score"), cid))
            first_flag.setdefault(acc, (t, r.get("components"), r.get("score"), cid))

# per compromise: attacker messages sent up to the first flag of the account
# at or after the compromise started
results = []
for cid, c in comps.items():
    acc = c["account"]
    start = c.get("first") or c["start"]
    ft = None
    for (a, t, comp, score, fcid) in flags:
        if a == acc and t >= start:
            ft = (t, comp, score)
            break
    msgs = sorted(attack_msgs[cid])
    if ft is None:
        until = None
    else:
        until = max([m for (t, m) in msgs if t <= ft[0]] or [0])
    results.append((c, until, ft))

K = len(results)
det50 = sum(1 for (c, u, f) in results if u is not None and u <= 50)
det_any = sum(1 for (c, u, f) in results if u is not None)
compromised = {c["account"] for c in comps.values()}
normal = [a for a in accs if a not in compromised]
fp_accounts = [a for a in normal if a in first_flag]
pre_fp = [c["account"] for (c, u, f) in results
          if c["account"] in first_flag and first_flag[c["account"]][0] < (c.get("first") or c["start"])]
true_flags = sum(1 for (a, t, comp, s, fcid) in flags
                 if a in compromised and t >= (comps[accs[a]["compromise"]].get("first") or 0))
precision = true_flags / len(flags) if flags else 1.0

def pct(a, b):
    return "%.1f %%" % (100.0 * a / b) if b else "n/a"

print("### Anomaly score evaluation (seed %s)\n" % seed)
summary = [l for l in replay_log if "maillog" not in l]
print("Traffic: %d accounts, %d days, %d requests (RCPT), %d injected compromises of "
      "%d attacker messages each; generated in %s s, replayed in %s s (`%s`)." %
      (len(accs), meta["days"], n, K, max((c["sent"] for c in comps.values()), default=0),
       tgen, trep, summary[-1] if summary else ""))
print()
print("| measure | value |")
print("|---|---|")
print("| compromises flagged within their first 50 messages | %d / %d = **%s** (goal ≥ 95 %%) |" % (det50, K, pct(det50, K)))
print("| compromises flagged at all | %d / %d = %s |" % (det_any, K, pct(det_any, K)))
print("| normal accounts ever flagged (30 days) | %d / %d = **%s** (goal ≤ 0.1 %%) |" % (len(fp_accounts), len(normal), pct(len(fp_accounts), len(normal))))
print("| compromised accounts flagged before their compromise | %d |" % len(pre_fp))
print("| precision of flags (flags on a compromise / all flags) | %d / %d = %s |" % (true_flags, len(flags), pct(true_flags, len(flags))))
print("| normal requests at warn / hold / defer score | %d / %d / %d of %d (%s / %s / %s) |" %
      (holds["warn"], holds["hold"], holds["defer"], normal_req, pct(holds["warn"], normal_req),
       pct(holds["hold"], normal_req), pct(holds["defer"], normal_req)))
print("| normal accounts with at least one hold-level request | %d / %d = %s |" % (len(hold_accounts - compromised), len(normal), pct(len(hold_accounts - compromised), len(normal))))
if any("maillog" in l for l in replay_log):
    print("| never-compromised accounts with a bounce component | %d / %d |" % (len(bounce_comp - compromised), len(normal)))
    print("| replay's log | %s |" % [l for l in replay_log if "maillog" in l][-1].replace("policyd: replay: ", ""))
print()
by_kind = collections.defaultdict(list)
for (c, u, f) in results:
    k = c["kind"] + (" (lateral)" if c.get("lateral") else "") + (" (own machine)" if c.get("own_machine") else "")
    by_kind[k].append(u)
print("| compromise kind | n | flagged ≤ 50 msgs | median msgs until flag | max |")
print("|---|---|---|---|---|")
for k in sorted(by_kind):
    us = by_kind[k]
    got = sorted(u for u in us if u is not None)
    med = got[len(got) // 2] if got else "-"
    print("| %s | %d | %s | %s | %s |" % (k, len(us), pct(sum(1 for u in us if u is not None and u <= 50), len(us)), med, got[-1] if got else "-"))
print()
missed = [(c, u, f) for (c, u, f) in results if u is None or u > 50]
if missed:
    print("Missed or late compromises (kind, listed, attacker messages until flag):\n")
    for (c, u, f) in missed[:15]:
        print("- #%d %s%s%s from AS%d (%s)%s: %s" % (c["id"], c["kind"], " lateral" if c.get("lateral") else "",
              " forged" if c.get("forged") else "", c["asn"], c["cc"], " listed" if c["listed"] else "",
              "never flagged" if u is None else "%d messages" % u))
    print()
if fp_accounts or pre_fp:
    print("Worst false positives (normal accounts flagged), with the components of the flag:\n")
    for a in (fp_accounts + pre_fp)[:12]:
        t, comp, score, _ = first_flag[a]
        m = accs[a]
        traits = [m["kind"]] + [k for k in ("traveller", "vpn", "alias", "bare_login") if m.get(k)]
        if m.get("event_day") is not None:
            traits.append("event day %d" % m["event_day"])
        if m.get("created_day"):
            traits.append("created day %d" % m["created_day"])
        print("- account %d (%s), day %.1f, score %s: %s" % (a, ", ".join(traits), (t - meta["t0"]) / 86400.0, score, "; ".join(comp or [])))
    print()
EOF
