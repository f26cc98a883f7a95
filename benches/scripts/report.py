#!/usr/bin/env python3
"""The table of a side-by-side run: every figure as a ratio to its baseline, with the
absolute figures beside it.

Usage:
    python3 benches/scripts/report.py [--run RUN_ID] [--markdown] [RESULTS.jsonl ...]

Reads loadgen result lines (default: benches/results/side_by_side.jsonl and
benches/results/cluster.jsonl) tagged by side_by_side.sh or redis_cluster_run.sh with
`meta: {run, target, contender, baseline, round}`, keeps those of one run (default: the
newest), and prints per target and measure: the baseline's and the subject's figure in
each round, their medians, the ratio subject / baseline of each round (rounds are paired:
round n of one ran right after round n of the other) and the median ratio, and the bound
issue 16 sets, when it sets one. A run whose load generator lost, duplicated, reordered or
misrouted anything, or saturated its own core, is flagged under the table: its figures
describe the generator as much as the server.
Standard library only.
"""

import argparse
import statistics
import sys

import results

DEFAULT_FILES = ["benches/results/side_by_side.jsonl", "benches/results/cluster.jsonl"]


def first_step(rec):
    return rec["steps"][0]


def step_value(path):
    def get(rec):
        v = first_step(rec)
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        return v

    return get


def sweep_max(rec):
    return rec.get("max_passing_deliveries_per_s") or 0.0


def sweep_step_value(path):
    """A figure of the highest passing step of a sweep (None when none passed)."""

    def get(rec):
        best = rec.get("max_passing_deliveries_per_s")
        for s in rec.get("steps", []):
            if best is not None and s["offered_deliveries_per_s"] == best:
                v = s
                for k in path:
                    v = v.get(k) if isinstance(v, dict) else None
                return v
        return None

    return get


def churn_over_baseline(rec):
    at = rec.get("server_rss_after_soak") or {}
    return at.get("over_baseline")


def rate(rec):
    return first_step(rec)["offered_deliveries_per_s"]


# Per target: (measure, how to read it, bound on the ratio, bound on the subject's own
# figure). Bounds are issue 16's targets; "<=" / ">=" say which way is better.
MEASURES = {
    "sweep": [
        ("deliveries/s with p99 within the limit, nothing lost", sweep_max, (">=", 0.9), None),
    ],
    "cpu": [
        ("server CPU-s per M deliveries at {rate}/s",
         step_value(["server", "cpu_s_per_million_deliveries"]), ("<=", 1.1), None),
        ("p99 ms at {rate}/s", step_value(["latency", "p99_ms"]), None, None),
    ],
    "saturation": [
        ("server CPU-s per M deliveries at saturation",
         step_value(["server", "cpu_s_per_million_deliveries"]), ("<=", 1.2), None),
        ("deliveries/s served at saturation ({rate}/s offered)",
         step_value(["deliveries_per_s"]), None, None),
        ("server CPU utilisation at saturation", step_value(["server", "cpu_util"]), None, None),
    ],
    "p99": [
        ("p99 ms at {rate}/s", step_value(["latency", "p99_ms"]), ("<=", 1.5), ("<=", 10.0)),
        ("server CPU-s per M deliveries at {rate}/s",
         step_value(["server", "cpu_s_per_million_deliveries"]), None, None),
    ],
    "idle": [
        ("bytes per idle connection, fresh", lambda r: r.get("bytes_per_connection_fresh"),
         ("<=", 0.6), None),
        ("bytes per idle connection after a burst",
         lambda r: r.get("bytes_per_connection_after_burst"), None, ("<=", 6144.0)),
    ],
    "churn": [
        ("RSS {after} s after a churn soak / pre-traffic RSS", churn_over_baseline, None,
         ("<=", 1.1)),
        ("RSS KiB {after} s after the soak",
         lambda r: (r.get("server_rss_after_soak") or {}).get("rss_kib"), None, None),
        ("RSS KiB before any traffic", lambda r: r.get("server_rss_kib_baseline"), None, None),
    ],
    "lifecycle": [
        ("server CPU-s per M deliveries at {rate}/s",
         step_value(["server", "cpu_s_per_million_deliveries"]), None, None),
        ("p99 ms at {rate}/s", step_value(["latency", "p99_ms"]), None, None),
    ],
    "cluster_sweep": [
        ("deliveries/s with p99 within the limit, nothing lost", sweep_max, None, None),
        ("CPU-s per M deliveries, servers + extra pids, at that rate",
         sweep_step_value(["server", "cpu_s_per_million_deliveries_with_extra"]), None, None),
    ],
    "cluster_cpu": [
        ("CPU-s per M deliveries, servers + extra pids, at {rate}/s",
         step_value(["server", "cpu_s_per_million_deliveries_with_extra"]), None, None),
        ("of which the extra pids (Redis)",
         step_value(["extra", "cpu_s_per_million_deliveries"]), None, None),
        ("p99 ms at {rate}/s", step_value(["latency", "p99_ms"]), None, None),
        ("Redis commands per published event",
         step_value(["redis", "commands_per_event"]), None, None),
    ],
}


def tagged(rec):
    meta = rec.get("meta") or {}
    return bool(meta.get("run") and meta.get("target") and meta.get("contender"))


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) < 10:
        return f"{v:.2f}"
    if isinstance(v, float) and abs(v) < 100:
        return f"{v:.1f}"
    return f"{v:,.0f}"


def params(rec):
    """What a measure's label may name: the offered rate, the churn reading's delay."""
    p = {"rate": "?", "after": "?"}
    if rec and rec.get("steps"):
        p["rate"] = fmt(rate(rec))
    at = (rec or {}).get("server_rss_after_soak") or {}
    if at.get("after_s") is not None:
        p["after"] = f"{at['after_s']:.0f}"
    return p


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def holds(bound, v):
    if bound is None or v is None:
        return None
    op, limit = bound
    return v <= limit if op == "<=" else v >= limit


def troubles(rec):
    """What makes a record's figures doubtful."""
    out = []
    for key in ("lost", "duplicates", "reordered", "misrouted"):
        n = sum(s.get(key, 0) for s in rec.get("steps", []) if s.get("pass") or rec["scenario"] != "sweep")
        if n:
            out.append(f"{key} {n}")
    if any(s.get("loadgen", {}).get("saturated") for s in rec.get("steps", [])):
        out.append("load generator saturated")
    if rec["scenario"] == "sweep" and rec.get("first_failing_deliveries_per_s") is None:
        out.append("passed every step: the list of rates ended before the limit was found")
    ready = rec.get("ready") or {}
    if ready.get("failed"):
        out.append(f"{ready['failed']} connections failed")
    return out


def report(records, run, markdown):
    recs = [r for r in records if r["meta"]["run"] == run]
    targets = []
    for r in recs:
        if r["meta"]["target"] not in targets:
            targets.append(r["meta"]["target"])
    lines = []
    notes = []
    sep = " | "
    header = ["target", "measure", "baseline", "subject", "baseline per round", "subject per round",
              "ratio per round", "ratio (median)", "bound", "holds"]
    if markdown:
        lines.append("| " + sep.join(header) + " |")
        lines.append("|" + "---|" * len(header))
    for target in targets:
        trecs = [r for r in recs if r["meta"]["target"] == target]
        baseline = trecs[0]["meta"].get("baseline") or trecs[0]["meta"]["contender"]
        # Without a subject (a run of the baseline alone), its figures are shown alone.
        subjects = sorted({r["meta"]["contender"] for r in trecs} - {baseline}) or [baseline]
        by = {}
        for r in trecs:
            by.setdefault(r["meta"]["contender"], {})[str(r["meta"].get("round", "1"))] = r
            for t in troubles(r):
                notes.append(f"{target}, {r['meta']['contender']}, round {r['meta'].get('round')}: {t}")
        rounds = sorted(by.get(baseline, {}), key=lambda x: (len(x), x))
        for subject in subjects:
            for name, get, ratio_bound, abs_bound in MEASURES.get(target, []):
                base = [get(by[baseline][n]) if n in by.get(baseline, {}) else None for n in rounds]
                subj = [get(by[subject][n]) if n in by.get(subject, {}) else None for n in rounds]
                alone = subject == baseline
                ratios = [None if alone else (s / b if (s is not None and b) else None)
                          for s, b in zip(subj, base)]
                some = next((by[c][n] for c in (baseline, subject) for n in rounds if n in by.get(c, {})), None)
                label = name.format(**params(some))
                r_med = median(ratios)
                verdicts = [v for v in (holds(ratio_bound, r_med), holds(abs_bound, median(subj))) if v is not None]
                bound = " and ".join(
                    b for b in (
                        f"ratio {ratio_bound[0]} {ratio_bound[1]}" if ratio_bound else "",
                        f"{subject} {abs_bound[0]} {fmt(abs_bound[1])}" if abs_bound else "",
                    ) if b
                )
                row = [
                    target, label if alone else f"{label} ({subject} / {baseline})",
                    fmt(median(base)), "–" if alone else fmt(median(subj)),
                    ", ".join(fmt(v) for v in base), "–" if alone else ", ".join(fmt(v) for v in subj),
                    ", ".join(fmt(v) for v in ratios), fmt(r_med), bound or "–",
                    ("yes" if all(verdicts) else "NO") if verdicts else "–",
                ]
                if markdown:
                    lines.append("| " + sep.join(row) + " |")
                else:
                    w = max(len(baseline), len(subject), len("ratio"))
                    text = f"{target:<13} {row[1]}\n    {baseline:<{w}} {row[2]:>10}  ({row[4]})"
                    if not alone:
                        text += (
                            f"\n    {subject:<{w}} {row[3]:>10}  ({row[5]})\n"
                            f"    {'ratio':<{w}} {row[7]:>10}  ({row[6]})   bound: {row[8]}   holds: {row[9]}"
                        )
                    lines.append(text)
    print(f"run {run}: {len(recs)} result lines")
    print("\n".join(lines))
    if notes:
        print("\nDoubtful rounds:")
        for n in notes:
            print(f"  - {n}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", default=DEFAULT_FILES)
    ap.add_argument("--run", help="the run id (meta.run); default: the newest run")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = ap.parse_args()
    records = results.load(args.files, keep=tagged)
    if not records:
        sys.exit("no tagged result lines (run side_by_side.sh or redis_cluster_run.sh first)")
    run = args.run or max(records, key=lambda r: r.get("unix_time", 0))["meta"]["run"]
    report(records, run, args.markdown)


if __name__ == "__main__":
    main()
