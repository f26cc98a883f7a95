#!/usr/bin/env python3
"""Charts of latency and server CPU against offered load, from loadgen's JSON results.

Usage:
    pip install matplotlib
    python3 benches/scripts/plot.py [RESULTS.jsonl ...] [--out-dir benches/results]

Reads every `sweep` record (one JSON line each, as `loadgen sweep --out FILE` appends
them) and draws, per record (labelled by its `label` and `mode`):
  - latency.svg: p50 and p99 delivery latency (ms) against offered deliveries/s;
  - cpu.svg: server CPU-seconds per million deliveries, and server CPU utilisation,
    against offered deliveries/s.
Only measured steps are drawn; nothing is interpolated beyond them.
"""

import argparse
import glob
import os
import sys

import results


def load(paths):
    return results.load(paths, keep=lambda rec: rec.get("scenario") == "sweep")


def series(rec):
    xs, p50, p99, cpu_m, util = [], [], [], [], []
    for s in rec["steps"]:
        xs.append(s["offered_deliveries_per_s"] / 1000.0)
        p50.append(s["latency"]["p50_ms"])
        p99.append(s["latency"]["p99_ms"])
        cpu_m.append(s["server"]["cpu_s_per_million_deliveries"])
        util.append(100.0 * s["server"]["cpu_util"])
    return xs, p50, p99, cpu_m, util


def name(rec):
    label = rec.get("label") or ""
    burst = rec.get("burst")
    kind = f"bursty ×{burst}" if burst else "steady"
    return " ".join(p for p in [label, rec.get("mode", ""), kind] if p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*")
    ap.add_argument("--out-dir", default="benches/results")
    args = ap.parse_args()
    files = args.files or sorted(glob.glob("benches/results/*.jsonl"))
    records = load(files)
    if not records:
        sys.exit("no sweep records found")

    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "agentwire"  # stable ids: diffable SVGs
    import matplotlib.pyplot as plt

    os.makedirs(args.out_dir, exist_ok=True)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for rec in records:
        xs, p50, p99, _, _ = series(rec)
        (line,) = ax.plot(xs, p99, marker="o", label=f"{name(rec)} p99")
        ax.plot(xs, p50, marker=".", linestyle="--", color=line.get_color(), label=f"{name(rec)} p50")
    ax.axhline(10, color="grey", linewidth=0.8, linestyle=":")
    ax.text(0.01, 10, " p99 target 10 ms", va="bottom", transform=ax.get_yaxis_transform(), color="grey")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (thousand deliveries/s)")
    ax.set_ylabel("delivery latency (ms, log)")
    ax.set_title("Latency against offered load (server pinned to one core)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, "latency.svg"), metadata={"Date": None})

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for rec in records:
        xs, _, _, cpu_m, util = series(rec)
        a1.plot(xs, cpu_m, marker="o", label=name(rec))
        a2.plot(xs, util, marker="o", label=name(rec))
    a1.axhline(13, color="grey", linewidth=0.8, linestyle=":")
    a1.text(0.01, 13, " target 13 CPU-s/M at 40k/s", va="bottom", transform=a1.get_yaxis_transform(), color="grey")
    a1.set_xlabel("offered load (thousand deliveries/s)")
    a1.set_ylabel("server CPU-seconds per million deliveries")
    a1.set_ylim(bottom=0)
    a1.grid(True, alpha=0.3)
    a1.legend(fontsize=7)
    a2.set_xlabel("offered load (thousand deliveries/s)")
    a2.set_ylabel("server CPU utilisation (% of one core)")
    a2.set_ylim(0, 110)
    a2.grid(True, alpha=0.3)
    fig.suptitle("Server CPU against offered load")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out_dir, "cpu.svg"), metadata={"Date": None})
    print(f"wrote {args.out_dir}/latency.svg and {args.out_dir}/cpu.svg from {len(records)} sweep(s)")


if __name__ == "__main__":
    main()
